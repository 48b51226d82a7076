"""Serve the WSGI app with waitress on the loopback address, in a thread that can be stopped."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0


class Server:
    """A waitress server bound at construction (so the port is known), run on its own thread."""

    def __init__(
        self, app: Any, host: str, port: int, *, threads: int, max_body_bytes: int
    ) -> None:
        # Any: waitress types create_server() as a union and we reach its channel map on stop.
        self._server: Any = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            # waitress's own limit is a backstop above ours, so our 413 (with the error shape)
            # answers first; only a chunked body far past it meets waitress's plain 413.
            max_request_body_size=max_body_bytes * 4,
            ident="till-agent",
        )
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    def start(self) -> None:
        self._thread.start()
        log.info("api listening", extra={"url": f"http://{self.host}:{self.port}"})

    def _run(self) -> None:
        try:
            self._server.run()
        except OSError:
            log.debug("api server loop ended")  # close() from another thread ends the loop

    def stop(self, timeout_seconds: float) -> None:
        """Stop accepting, let requests in flight finish and flush, then close every connection.

        A request still queued (not started) is dropped with its connection: nothing was
        written for it and the POS gets no answer, so it sends it again.
        """
        deadline = time.monotonic() + timeout_seconds
        self._server.close()  # the listening socket: no new connections
        self._server.task_dispatcher.shutdown(timeout=max(0.1, deadline - time.monotonic()))
        self._wait_for_flush(deadline)
        wasyncore.close_all(self._server._map)
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def _wait_for_flush(self, deadline: float) -> None:
        """Give the loop thread time to send the answers the workers just wrote."""
        until = min(deadline, time.monotonic() + FLUSH_SECONDS)
        while time.monotonic() < until:
            channels = list(self._server._map.values())
            if not any(getattr(c, "total_outbufs_len", 0) for c in channels):
                return
            time.sleep(0.01)
