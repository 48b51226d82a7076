"""Simulated Loaded-style analytics: OAuth2 client credentials and sales upserted by externalId."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from agent.sandbox.http import Request, Response, json_response

MAX_EXTERNAL_ID = 255


@dataclass(frozen=True)
class Token:
    """An issued access token and until when it is good."""

    value: str
    expires_at: float


def error(status: int, message: str, **extra: Any) -> Response:
    """Every Loaded error carries a unique errorId."""
    return json_response(status, {"errorId": str(uuid.uuid4()), "message": message, **extra})


class LoadedApi:
    """Token endpoint and sales; paths work with or without a /loaded prefix."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        now: Callable[[], float],
        token_seconds: float = 3600.0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_seconds = token_seconds
        self._now = now
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """No sales, no tokens."""
        with self._lock:
            self.sales: dict[str, dict[str, Any]] = {}
            self.sale_writes = 0
            self.tokens: dict[str, Token] = {}
            self.refresh_tokens: set[str] = set()

    def counts(self) -> dict[str, int]:
        """How much state there is, for the admin route."""
        with self._lock:
            return {"sales": len(self.sales), "saleWrites": self.sale_writes}

    def revoke_tokens(self) -> None:
        """Every access token becomes unknown (a 401 on its next use)."""
        with self._lock:
            self.tokens.clear()

    @staticmethod
    def error(status: int, message: str) -> Response:
        """The error body a fault answers with."""
        return error(status, message)

    @staticmethod
    def item_id(request: Request) -> str | None:
        """reject_ids matches a sale's externalId (from the path or the body)."""
        tail = request.path.rsplit("/", 1)[-1]
        if tail.startswith("eid:"):
            return unquote(tail[4:])
        body = request.json
        return str(body.get("externalId")) if isinstance(body, dict) else None

    def handle(self, request: Request) -> Response:
        """Route one request."""
        route = request.path.removeprefix("/loaded").rstrip("/")
        if route == "/oauth/token" and request.method == "POST":
            return self._token(request)
        if not self._authorized(request):
            return error(401, "invalid or expired access token")
        if route == "/pos/sales" and request.method == "POST":
            return self._post_sale(request)
        if route.startswith("/pos/sales/eid:"):
            return self._sale(request, unquote(route.removeprefix("/pos/sales/eid:")))
        return error(404, f"no route {request.method} {request.path}")

    # --- OAuth2 -----------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        grant = form.get("grant_type")
        if grant == "client_credentials":
            if (form.get("client_id"), form.get("client_secret")) != (
                self.client_id,
                self.client_secret,
            ):
                return error(401, "client authentication failed", error="invalid_client")
            return self._issue()
        if grant == "refresh_token":
            with self._lock:
                known = form.get("refresh_token") in self.refresh_tokens
                self.refresh_tokens.discard(form.get("refresh_token", ""))
            if not known:
                return error(400, "unknown refresh_token", error="invalid_grant")
            return self._issue()
        return error(
            400,
            "grant_type must be client_credentials or refresh_token",
            error="unsupported_grant_type",
        )

    def _issue(self) -> Response:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[access] = Token(access, self._now() + self.token_seconds)
            self.refresh_tokens.add(refresh)
        return json_response(
            200,
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": int(self.token_seconds),
                "refresh_token": refresh,
            },
        )

    def _authorized(self, request: Request) -> bool:
        value = request.header("authorization").removeprefix("Bearer ")
        with self._lock:
            token = self.tokens.get(value)
        return token is not None and self._now() < token.expires_at

    # --- sales ------------------------------------------------------------------------

    def _post_sale(self, request: Request) -> Response:
        body = request.json
        if not isinstance(body, dict) or not body.get("externalId"):
            return error(400, "a sale is a JSON object with an externalId")
        return self._store(str(body["externalId"]), body)

    def _sale(self, request: Request, external_id: str) -> Response:
        if request.method == "GET":
            with self._lock:
                sale = self.sales.get(external_id)
            if sale is None:
                return error(404, f"no sale eid:{external_id}")
            return json_response(200, sale)
        if request.method != "PUT":
            return error(405, "GET or PUT a sale by eid")
        body = request.json
        if not isinstance(body, dict):
            return error(400, "a sale is a JSON object")
        return self._store(external_id, {**body, "externalId": external_id})

    def _store(self, external_id: str, sale: dict[str, Any]) -> Response:
        if len(external_id) > MAX_EXTERNAL_ID:
            return error(400, f"externalId longer than {MAX_EXTERNAL_ID} characters")
        with self._lock:
            created = external_id not in self.sales
            self.sales[external_id] = sale
            self.sale_writes += 1
        return json_response(201 if created else 200, {"id": f"eid:{external_id}", **sale})
