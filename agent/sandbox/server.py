"""The sandbox cloud: one WSGI app over the simulated APIs, with recording, faults and serving."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

from waitress.server import create_server

from agent.sandbox import admin
from agent.sandbox.engage import EngageApi
from agent.sandbox.faults import Faults, Verdict
from agent.sandbox.http import Request, Response, parse_json
from agent.sandbox.lightspeed import LightspeedApi
from agent.sandbox.loaded import LoadedApi
from agent.sandbox.proxy import TcpFront
from agent.sandbox.webhook import WebhookApi

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
PREFIXES = (
    ("/_sandbox/", "admin"),
    ("/api/v2/", "engage"),
    ("/api/v3/", "engage"),
    ("/api/2.0/", "lightspeed"),
    ("/api/1.0/token", "lightspeed"),
    ("/loaded/", "loaded"),
    ("/oauth/", "loaded"),
    ("/pos/", "loaded"),
    ("/v1/", "loaded"),
    ("/webhook/", "webhook"),
)
MALFORMED_BODY = b"<html><body>502 Bad Gateway (sandbox: not JSON)</body></html>"


class Api(Protocol):
    """What each simulated API module offers the server."""

    def handle(self, request: Request) -> Response: ...
    def error(self, status: int, message: str) -> Response: ...
    def item_id(self, request: Request) -> str | None: ...
    def counts(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the sandbox saw it, and the status it answered (0: connection reset)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    api: str
    status: int
    at: float
    target: str = ""  # the request-target as sent, still percent-encoded (path and query)


def receipt_key(request: RecordedRequest) -> str | None:
    """The receipt id a recorded request writes: an Engage receipt, a Loaded order; else None."""
    body = request.json if isinstance(request.json, dict) else {}
    if request.api == "engage" and request.method == "POST" and request.path.endswith("/receipts"):
        return str(body["uniqueReceiptId"]) if "uniqueReceiptId" in body else None
    if request.api == "loaded" and "/pos/orders" in request.path and request.method != "GET":
        tail = request.path.rstrip("/").rsplit("/", 1)[-1]
        if tail.startswith("eid:"):
            return unquote(tail[4:])
        return str(body["externalId"]) if "externalId" in body else None
    return None


def api_for(path: str) -> str:
    """Which simulated API a path belongs to ("unknown" for none)."""
    return next((api for prefix, api in PREFIXES if path.startswith(prefix)), "unknown")


def read_request(environ: dict[str, Any]) -> tuple[Request, dict[str, str]]:
    """The WSGI environ as a Request, plus its headers in their usual spelling."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    headers = {
        key[5:].replace("_", "-").title(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").title()] = str(environ[key])
    raw_path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
    query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    lowered = {k.lower(): v for k, v in headers.items()}
    target = str(environ.get("REQUEST_URI", ""))
    as_sent = target.partition("?")[0] if target.startswith("/") else ""
    request = Request(
        environ["REQUEST_METHOD"], raw_path, query, lowered, body, parse_json(body), as_sent
    )
    return request, headers


class SandboxCloud:
    """The simulated clouds behind one base URL; see docs/sandbox.md."""

    def __init__(
        self,
        seed: int = 1,
        now: Callable[[], float] = time.time,
        *,
        engage_api_key: str = "sandbox-engage-key",
        engage_rate_per_second: int = 200,
        engage_changes_cap: int = 250_000,
        engage_bulk_seconds: float = 0.2,
        loaded_client_id: str = "sandbox-client",
        loaded_client_secret: str = "sandbox-secret",
        loaded_token_seconds: float = 3600.0,
        lightspeed_token: str = "sandbox-lightspeed-token",
        lightspeed_rate_limit: int = 350,
        lightspeed_rate_window_seconds: float = 300.0,
        lightspeed_token_seconds: float = 604_800.0,
        webhook_secret: str = "sandbox-webhook-secret",
    ) -> None:
        self.now = now
        self.faults = Faults(now, seed)
        self.engage = EngageApi(
            engage_api_key, now, engage_rate_per_second, engage_changes_cap, engage_bulk_seconds
        )
        self.loaded = LoadedApi(loaded_client_id, loaded_client_secret, now, loaded_token_seconds)
        self.lightspeed = LightspeedApi(
            lightspeed_token,
            now,
            seed,
            lightspeed_rate_limit,
            lightspeed_rate_window_seconds,
            token_seconds=lightspeed_token_seconds,
        )
        self.webhook = WebhookApi(webhook_secret)
        self.requests: list[RecordedRequest] = []
        self._record_lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._front: TcpFront | None = None
        self._stopping = threading.Event()
        self.faults.on_offline = self._switch_offline

    def apis(self) -> dict[str, Api]:
        """The simulated APIs by name."""
        return {
            "engage": self.engage,
            "loaded": self.loaded,
            "lightspeed": self.lightspeed,
            "webhook": self.webhook,
        }

    # --- serving ---------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> SandboxCloud:
        """Start waitress on a private port and the public front on host:port; returns self."""
        self._server = create_server(self, host=host, port=0, threads=16, ident="sandbox")
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=run_waitress, args=(self._server, self._stopping), name="sandbox", daemon=True
        )
        self._thread.start()
        backend = (host, int(self._server.effective_port))
        self._front = TcpFront(host, port, backend, self._record_reset)
        self._front.start()
        log.info("sandbox cloud serving on %s", self.url)
        return self

    @property
    def url(self) -> str:
        """The public base URL every simulated API is under."""
        if self._front is None:
            raise RuntimeError("the sandbox cloud is not serving: call serve() first")
        return f"http://{self._front.host}:{self._front.port}"

    @property
    def admin_url(self) -> str:
        """waitress's own port: never taken offline, so /_sandbox/* works during an outage."""
        if self._server is None:
            raise RuntimeError("the sandbox cloud is not serving: call serve() first")
        return f"http://{self._server.effective_host}:{self._server.effective_port}"

    def stop(self) -> None:
        """Close the front and waitress; join their threads."""
        if self._front is not None:
            self._front.stop()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        log.info("sandbox cloud stopped")

    def wait(self) -> None:
        """Block until stop() (for `till-agent sandbox`)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def _switch_offline(self, mode: str | None) -> None:
        if self._front is not None:
            self._front.set_mode(mode)

    # --- requests --------------------------------------------------------------------

    def accepted_receipts(self) -> dict[str, Counter[str]]:
        """How many times Engage and Loaded answered 2xx to each receipt, by its id, from the
        recorded requests: a count above 1 is a resend that the cloud took again."""
        counts: dict[str, Counter[str]] = {"engage": Counter(), "loaded": Counter()}
        with self._record_lock:
            recorded = list(self.requests)
        for request in recorded:
            key = receipt_key(request)
            if key is not None and 200 <= request.status < 300:
                counts[request.api][key] += 1
        return counts

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._record_lock:
            self.requests.clear()

    def reset(self) -> None:
        """Everything back to a fresh cloud: state, faults, recorded requests."""
        self.faults.clear()
        self.engage.reset()
        self.loaded.reset()
        self.lightspeed.reset()
        self.webhook.reset()
        self.clear_requests()

    def _record(
        self, request: Request, headers: dict[str, str], api: str, status: int, target: str = ""
    ) -> None:
        entry = RecordedRequest(
            request.method,
            request.path,
            request.query,
            headers,
            request.body,
            request.json,
            api,
            status,
            self.now(),
            target,
        )
        with self._record_lock:
            self.requests.append(entry)

    def _record_reset(self, data: bytes) -> None:
        """A request the front reset: what its first line says, status 0."""
        line = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        method, target = [*line, "", ""][:2]
        path, _, query = target.partition("?")
        request = Request(method, path, dict(parse_qsl(query)), {}, b"")
        self._record(request, {}, api_for(path), 0, target)

    # --- WSGI ------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request, headers = read_request(environ)
        api = api_for(request.path)
        response = self._answer(api, request)
        self._record(request, headers, api, response.status, str(environ.get("REQUEST_URI", "")))
        out = [("Content-Type", response.content_type), *response.headers.items()]
        if "Content-Length" not in response.headers:
            out.append(("Content-Length", str(len(response.body))))
        start_response(f"{response.status} {reason(response.status)}", out)
        return [response.body]

    def _answer(self, api: str, request: Request) -> Response:
        if api == "admin":
            return admin.handle(self, request)
        handler = self.apis().get(api)
        if handler is None:
            return Response(404, b'{"message":"no such API in the sandbox"}')
        verdict = self.faults.decide(api)
        if verdict.latency_seconds:
            time.sleep(verdict.latency_seconds)
        faulted = self._fault(handler, api, request, verdict)
        return faulted if faulted is not None else handler.handle(request)

    def _fault(self, handler: Api, api: str, request: Request, verdict: Verdict) -> Response | None:
        if verdict.kind == "status":
            response = handler.error(verdict.status, f"sandbox fault: {verdict.status}")
            if verdict.retry_after is not None:
                response.headers["Retry-After"] = verdict.retry_after
            return response
        if verdict.kind == "malformed":
            return Response(200, MALFORMED_BODY, content_type="application/json")
        if verdict.kind == "truncated":
            return _cut_off(200)
        if verdict.kind == "lost":
            return _cut_off(handler.handle(request).status)
        rejected = self.faults.rejection(api, handler.item_id(request))
        if rejected is not None:
            return handler.error(*rejected)
        return None


def _cut_off(status: int) -> Response:
    """An answer whose Content-Length promises 100 bytes more than come before the close."""
    body = b'{"truncated": tr'
    return Response(status, body, {"Content-Length": str(len(body) + 100)})


def reason(status: int) -> str:
    """The reason phrase for a status."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def run_waitress(server: Any, stopping: threading.Event) -> None:
    """waitress's loop until stopping is set; then its channels and workers close on this thread.

    Closing channels from another thread races the loop's select(), hence the loop is ours.
    """
    while not stopping.is_set():
        server.asyncore.loop(timeout=0.05, map=server._map, count=1)
    server.task_dispatcher.shutdown()
    for channel in list(server._map.values()):
        channel.handle_close()
