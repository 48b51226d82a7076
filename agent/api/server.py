"""Serve the WSGI app with waitress on the loopback address, in a thread that can be stopped."""

from __future__ import annotations

import logging
import threading
from typing import Any

from waitress.server import create_server

log = logging.getLogger(__name__)


class Server:
    """A waitress server bound at construction (so the port is known), run on its own thread."""

    def __init__(
        self, app: Any, host: str, port: int, *, threads: int, max_body_bytes: int
    ) -> None:
        self._server = create_server(
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
        return int(self._server.effective_port)  # type: ignore[union-attr]

    @property
    def host(self) -> str:
        return str(self._server.effective_host)  # type: ignore[union-attr]

    def start(self) -> None:
        self._thread.start()
        log.info("api listening", extra={"url": f"http://{self.host}:{self.port}"})

    def _run(self) -> None:
        try:
            self._server.run()
        except OSError:
            log.debug("api server loop ended")  # close() from another thread ends the loop

    def stop(self, timeout_seconds: float) -> None:
        """Stop accepting, let the worker threads finish their requests, close the socket."""
        self._server.close()
        self._thread.join(timeout_seconds)
        task_dispatcher = getattr(self._server, "task_dispatcher", None)
        if task_dispatcher is not None:
            task_dispatcher.shutdown(timeout=timeout_seconds)
