"""The request and response values the simulated APIs and the server exchange."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    """One parsed HTTP request; header names lower-cased, query values the last one given."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    raw_path: str = ""  # the path as sent, still percent-encoded ("" when not known)

    def header(self, name: str) -> str:
        """The header's value, or "" when absent."""
        return self.headers.get(name.lower(), "")

    @property
    def routed_path(self) -> str:
        """The path a real server routes on: as sent, so an id's %2F stays in its segment
        (each id is unquoted once, after routing)."""
        return self.raw_path or self.path


@dataclass
class Response:
    """One answer: status, extra headers, and the raw body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return Response(status, body, dict(headers or {}))


def parse_json(body: bytes) -> Any:
    """The body as JSON, or None when empty or not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
