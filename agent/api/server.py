"""Serve the WSGI app with waitress on the loopback address, in a thread that can be stopped."""

from __future__ import annotations

import logging
import sys
import threading
import time
from http import HTTPStatus
from typing import Any

import msgspec
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from agent.api.errors import new_error_id

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
FD_RESERVE = 256  # file descriptors kept for the stores, the logs and the cloud connections
NEVER = sys.maxsize  # a buffer size waitress never reaches
# waitress's own refusals, as the API's codes (docs/api.md, "Errors").
WAITRESS_CODES = {
    400: ("bad_request", "the request is malformed"),
    413: ("payload_too_large", "the body is over the size limit"),
    431: ("headers_too_large", "the request's headers are too large"),
    500: ("internal_error", "internal error"),
    501: ("not_implemented", "the request uses an HTTP feature this server does not implement"),
}


class _JsonErrorTask(ErrorTask):
    """A request waitress itself refuses (malformed, headers or body too large), answered in
    the API's one error shape with an errorId that is also logged."""

    def execute(self) -> None:
        error: Any = getattr(self.request, "error", None)
        status = int(getattr(error, "code", 400))
        code, message = WAITRESS_CODES.get(status, ("bad_request", "the request is malformed"))
        error_id = new_error_id()
        log.warning(
            "request refused by the server: %s",
            code,
            extra={"errorId": error_id, "status": status, "code": code},
        )
        body = msgspec.json.encode(
            {"error": {"code": code, "message": message, "errorId": error_id, "details": []}}
        )
        self.status = f"{status} {HTTPStatus(status).phrase}"
        self.response_headers = [
            *self.response_headers,
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
        ]
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    error_task_class = _JsonErrorTask


class Server:
    """A waitress server bound at construction (so the port is known), run on its own thread.

    Hardened against hostile clients (issue 14): slow connections wait in a poll() loop (not
    select(), which stops at 1,024 descriptors) and cost no worker thread until a whole request
    has arrived; up to max_connections of them are held, idle ones dropped after
    idle_timeout_seconds; a body is buffered in memory only (waitress would spill one over
    512 KiB to $TMPDIR, outside the data directory, in plaintext).
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        threads: int,
        max_body_bytes: int,
        max_connections: int = 4096,
        idle_timeout_seconds: float = 30.0,
    ) -> None:
        limit = raise_descriptor_limit(max_connections + FD_RESERVE) - FD_RESERVE
        # Any: waitress types create_server() as a union and we reach its channel map on stop.
        server: Any = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=max_body_bytes,
            inbuf_overflow=max_body_bytes + 1,  # never to a temporary file
            outbuf_overflow=NEVER,
            connection_limit=max(1, min(max_connections, limit)),
            channel_timeout=max(1, int(idle_timeout_seconds)),
            cleanup_interval=max(1, min(10, int(idle_timeout_seconds) // 3)),
            asyncore_use_poll=True,
            ident="till-agent",
        )
        server.channel_class = _Channel
        self._server: Any = server
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


def raise_descriptor_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards wanted (up to the hard limit); returns
    the limit now in force (wanted itself where the OS has no such limit)."""
    try:
        import resource
    except ImportError:  # Windows: no per-process descriptor limit of this kind
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("only %d open files allowed; fewer connections are held", soft)
    return wanted if soft == resource.RLIM_INFINITY else int(soft)
