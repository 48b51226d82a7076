"""Simulated webhook receiver: HMAC-SHA256 signed POSTs, deduplicated by Idempotency-Key."""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass
from typing import Any

from agent.sandbox.http import Request, Response, json_response

SIGNATURE_HEADER = "X-Till-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: "sha256=" + hex HMAC-SHA256 of the raw body."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass(frozen=True)
class Delivery:
    """One verified delivery, recorded once per Idempotency-Key."""

    name: str
    idempotency_key: str
    body: bytes
    json: Any


class WebhookApi:
    """POST /webhook/{name}: verify the signature, require the key, keep each key once."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Nothing received."""
        with self._lock:
            self.received: list[Delivery] = []
            self.duplicates = 0
            self._keys: set[tuple[str, str]] = set()

    def counts(self) -> dict[str, int]:
        """How much state there is, for the admin route."""
        with self._lock:
            return {"received": len(self.received), "duplicates": self.duplicates}

    @staticmethod
    def error(status: int, message: str) -> Response:
        """The receiver's error body."""
        return json_response(status, {"error": message})

    @staticmethod
    def item_id(request: Request) -> str | None:
        """reject_ids matches the envelope's idempotencyKey (the header carries its digest)."""
        body = request.json
        key = body.get("idempotencyKey") if isinstance(body, dict) else None
        return key if isinstance(key, str) else None

    def handle(self, request: Request) -> Response:
        """One delivery."""
        name = request.path.removeprefix("/webhook/").strip("/")
        if request.method != "POST" or not name or "/" in name:
            return self.error(404, "POST /webhook/{name}")
        expected = sign(self.secret, request.body)
        if not hmac.compare_digest(expected, request.header(SIGNATURE_HEADER)):
            return self.error(401, "bad or missing signature")
        key = request.header("idempotency-key")
        if not key:
            return self.error(400, "the Idempotency-Key header is required")
        with self._lock:
            if (name, key) in self._keys:
                self.duplicates += 1
                return json_response(200, {"status": "duplicate"})
            self._keys.add((name, key))
            self.received.append(Delivery(name, key, request.body, request.json))
        return json_response(200, {"status": "received"})
