"""WSGI plumbing: a small Request over the environ and a JSON Response; no business rules."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from agent.api.errors import (
    ForbiddenHostError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from agent.core.config import is_loopback

JSON = "application/json"


@dataclass
class Request:
    environ: dict[str, Any]
    max_body_bytes: int
    params: dict[str, str] = field(default_factory=dict)
    route: str = ""  # the matched route's template, once routed
    _body: bytes | None = None

    @property
    def method(self) -> str:
        return str(self.environ.get("REQUEST_METHOD", "GET")).upper()

    @property
    def path(self) -> str:
        """The path as the client wrote it: WSGI hands its bytes over as Latin-1, and a
        receipt id like S042-Łódź-000124 arrives as UTF-8 (invalid bytes replaced)."""
        raw = str(self.environ.get("PATH_INFO", "/"))
        return raw.encode("latin-1", "replace").decode("utf-8", "replace")

    @property
    def segments_path(self) -> str | None:
        """The path still percent-encoded, as sent (REQUEST_URI), so an id holding '/'
        or '?' stays one segment; None where the server does not give it."""
        raw = self.environ.get("REQUEST_URI")
        if not isinstance(raw, str):
            return None
        return urlsplit(raw).path or "/"

    def header(self, name: str) -> str:
        if name.lower() == "content-type":
            return str(self.environ.get("CONTENT_TYPE", ""))
        return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), ""))

    def body(self) -> bytes:
        """The body, read once; PayloadTooLargeError past the limit (announced or actual)."""
        if self._body is None:
            self._body = self._read_body()
        return self._body

    def _read_body(self) -> bytes:
        length_text = str(self.environ.get("CONTENT_LENGTH") or "")
        declared = int(length_text) if length_text.isdigit() else None
        if declared is not None and declared > self.max_body_bytes:
            raise PayloadTooLargeError(f"body of {declared} bytes is over {self.max_body_bytes}")
        stream = self.environ["wsgi.input"]
        data: bytes = stream.read(declared if declared is not None else self.max_body_bytes + 1)
        if len(data) > self.max_body_bytes:
            raise PayloadTooLargeError(f"body is over {self.max_body_bytes} bytes")
        return data


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        return cls(status, msgspec.json.encode(payload), JSON, headers or {})

    def wsgi_headers(self) -> list[tuple[str, str]]:
        base = [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            # The status page loads nothing from anywhere; nothing may frame it.
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
            ("X-Frame-Options", "DENY"),
        ]
        return base + list(self.headers.items())


REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def status_line(status: int) -> str:
    return f"{status} {REASONS.get(status, 'Unknown')}"


def check_host(request: Request) -> None:
    """Refuse a Host that is not a loopback name: the DNS-rebinding guard."""
    host = request.header("Host")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not host or not is_loopback(name.strip("[]")):
        raise ForbiddenHostError("requests must be addressed to a loopback host")


def check_token(request: Request, token: str) -> None:
    scheme, _, given = request.header("Authorization").partition(" ")
    # Bytes, not text: compare_digest refuses non-ASCII text ("Bearer pä" was a 500).
    offered = given.strip().encode("latin-1", "replace")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered, token.encode("ascii")):
        raise UnauthorizedError(
            "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


def check_json_media_type(request: Request) -> None:
    media_type = request.header("Content-Type").split(";")[0].strip().lower()
    if media_type and media_type != JSON and not media_type.endswith("+json"):
        raise UnsupportedMediaTypeError(f"expected {JSON}, got {media_type}")


def iterate(response: Response) -> Iterable[bytes]:
    return [response.body]
