"""Simulated Loaded: OAuth2 tokens, and categories, items and orders addressed by externalId.

As strict as Loaded's documents (api.loadedreports.com): an item names a category that exists,
an order names items that exist, an externalId is unique per record type and at most 255
characters, a refund order has positive unit prices and negative tenders, an expired token is
refused, every error carries a unique errorId. Updates are PATCH (positional for an order's
items, "Updating items"); no document shows PUT, so the sandbox refuses it.
"""

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
KINDS = ("categories", "items", "orders")
ROOTS = ("/loaded/v1/pos/", "/loaded/pos/", "/v1/pos/", "/pos/")
TOKEN_PATHS = ("/oauth/token", "/loaded/oauth/token", "/v1/oauth/token")
REQUIRED = {
    "categories": ("externalId", "name"),
    "items": ("externalId", "categoryExternalId", "name", "price"),
    "orders": ("externalId", "createdAt", "status", "items"),
}


@dataclass(frozen=True)
class Token:
    """An issued access token and until when it is good."""

    value: str
    expires_at: float


def error(status: int, message: str, **extra: Any) -> Response:
    """Every Loaded error carries a unique errorId."""
    return json_response(status, {"errorId": str(uuid.uuid4()), "message": message, **extra})


class LoadedApi:
    """Token endpoint and the POS records; paths work under /v1/pos, /pos and a /loaded prefix."""

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
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """No records, no tokens."""
        with self._lock:
            self.records: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
            self.writes: dict[str, int] = dict.fromkeys(KINDS, 0)
            self.tokens: dict[str, Token] = {}
            self.refresh_tokens: set[str] = set()

    @property
    def orders(self) -> dict[str, dict[str, Any]]:
        """externalId -> the order as it stands."""
        return self.records["orders"]

    @property
    def items(self) -> dict[str, dict[str, Any]]:
        return self.records["items"]

    @property
    def categories(self) -> dict[str, dict[str, Any]]:
        return self.records["categories"]

    def counts(self) -> dict[str, int]:
        """How much state there is, for the admin route."""
        with self._lock:
            counts = {kind: len(records) for kind, records in self.records.items()}
            return {**counts, "orderWrites": self.writes["orders"]}

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
        """reject_ids matches an order's externalId (from the eid: path or the body)."""
        if "/orders" not in request.path:
            return None
        tail = request.routed_path.rsplit("/", 1)[-1]
        if tail.startswith("eid:"):
            return unquote(tail[4:])
        body = request.json
        return str(body.get("externalId")) if isinstance(body, dict) else None

    def handle(self, request: Request) -> Response:
        """Route one request."""
        path = request.routed_path.rstrip("/")
        if path in TOKEN_PATHS and request.method == "POST":
            return self._token(request)
        route = next((path.removeprefix(r) for r in ROOTS if path.startswith(r)), None)
        if route is None:
            return error(404, f"no route {request.method} {request.path}")
        if not self._authorized(request):
            return error(401, "invalid or expired access token")
        kind, _, eid = route.partition("/eid:")
        if kind not in KINDS or "/" in eid:
            return error(404, f"no route {request.method} {request.path}")
        with self._lock:
            if not eid:
                return self._collection(request, kind)
            return self._record(request, kind, unquote(eid))

    # --- OAuth2 -----------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return error(401, "client authentication failed", error="invalid_client")
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return self._issue()
        if grant == "refresh_token":
            with self._lock:
                known = form.get("refresh_token") in self.refresh_tokens
                self.refresh_tokens.discard(form.get("refresh_token", ""))  # single use
            if not known:
                return error(400, "unknown or used refresh_token", error="invalid_grant")
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

    def issue_refresh_token(self) -> str:
        """A refresh token as Loaded would hand one to an integrator (for the tests and demo)."""
        refresh = secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens.add(refresh)
        return refresh

    def _authorized(self, request: Request) -> bool:
        value = request.header("authorization").removeprefix("Bearer ")
        with self._lock:
            token = self.tokens.get(value)
        return token is not None and self._now() < token.expires_at

    # --- records ------------------------------------------------------------------------

    def _collection(self, request: Request, kind: str) -> Response:
        if request.method != "POST":
            return error(405, f"{request.method} is not supported on {kind}")
        body = request.json
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        problem = self._problem(kind, body, creating=True)
        if problem is not None:
            return error(400, problem)
        external_id = str(body["externalId"])
        if external_id in self.records[kind]:
            return error(409, f"a record of {kind} with externalId {external_id} exists")
        self.records[kind][external_id] = dict(body)
        self.writes[kind] += 1
        return json_response(201, {"id": str(uuid.uuid4()), **body})

    def _record(self, request: Request, kind: str, external_id: str) -> Response:
        record = self.records[kind].get(external_id)
        if record is None:
            return error(404, f"no {kind} record eid:{external_id}")
        if request.method == "GET":
            return json_response(200, record)
        if request.method != "PATCH":
            return error(405, f"{request.method} is not supported; updates are PATCH")
        changes = request.json
        if not isinstance(changes, dict):
            return error(400, "the body must be a JSON object")
        merged = patched(record, changes)
        problem = self._problem(kind, merged, creating=False)
        if problem is not None:
            return error(400, problem)
        self.records[kind][external_id] = merged
        self.writes[kind] += 1
        return json_response(200, merged)

    def _problem(self, kind: str, body: dict[str, Any], *, creating: bool) -> str | None:
        missing = [name for name in REQUIRED[kind] if body.get(name) in (None, "")]
        if missing:
            return f"missing required field(s): {', '.join(missing)}"
        if len(str(body["externalId"])) > MAX_EXTERNAL_ID:
            return f"externalId longer than {MAX_EXTERNAL_ID} characters"
        if kind == "items":
            if str(body["categoryExternalId"]) not in self.categories:
                return f"no category with externalId {body['categoryExternalId']}"
            if not is_number(body["price"]):
                return "price must be a number"
        if kind == "orders":
            return self._order_problem(body)
        return None

    def _order_problem(self, order: dict[str, Any]) -> str | None:
        items, tenders = order["items"], order.get("tenders", [])
        if not isinstance(items, list) or not isinstance(tenders, list):
            return "items and tenders must be arrays"
        for index, item in enumerate(items):
            problem = self._line_problem(index, item, refund=order["status"] == "Refunded")
            if problem is not None:
                return problem
        for index, tender in enumerate(tenders):
            amount: Any = tender.get("invoiceAmount") if isinstance(tender, dict) else None
            if not is_number(amount):
                return f"tenders[{index}].invoiceAmount must be a number"
            if order["status"] == "Refunded" and amount > 0:
                return f"tenders[{index}]: a refund's invoiceAmount is negative"
        return None

    def _line_problem(self, index: int, item: Any, *, refund: bool) -> str | None:
        if not isinstance(item, dict):
            return f"items[{index}] must be an object"
        if str(item.get("externalId")) not in self.items:
            return f"items[{index}]: no item with externalId {item.get('externalId')}"
        for name in ("quantity", "unitPrice"):
            if not is_number(item.get(name)):
                return f"items[{index}].{name} must be a number"
        if refund and item["unitPrice"] < 0:
            return f"items[{index}]: a refunded item keeps its positive unitPrice"
        return None


def patched(record: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A PATCH applied: fields replaced; an items array updated by position (Loaded's rule)."""
    merged = {**record, **{k: v for k, v in changes.items() if k != "items"}}
    if isinstance(changes.get("items"), list) and isinstance(record.get("items"), list):
        old = record["items"]
        merged["items"] = [
            {**old[i], **item} if i < len(old) and isinstance(item, dict) else item
            for i, item in enumerate(changes["items"])
        ]
    elif "items" in changes:
        merged["items"] = changes["items"]
    merged["externalId"] = record["externalId"]
    return merged


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
