"""Simulated Lightspeed X-Series 2.0: customers walked by a global version cursor, rate-limited.

Auth as Lightspeed documents it (x-series-api.lightspeedhq.com, "Authorization" and the
changelog "2025-03 Refresh Token Flow Update"): a personal token, or an OAuth access token from
`POST /api/1.0/token` that expires (`expires_in`, 7 days by default) and a refresh token that is
single-use: refreshing revokes it and issues the next one. There is no grace period for the old
one (none is documented, so the sandbox takes the strictest reading).
"""

from __future__ import annotations

import bisect
import email.utils
import random
import secrets
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

from agent.sandbox import datagen
from agent.sandbox.http import Request, Response, json_response

PAGE_SIZE_MAX = 200
PAGE_SIZE_DEFAULT = 100
COLLECTION = "/api/2.0/customers"
TOKEN_PATH = "/api/1.0/token"
TOKEN_SECONDS = 604_800.0  # the changelog's example answer: expires_in 604800 (7 days)


class LightspeedApi:
    """Customers with versions from one global counter (bumped by random small steps)."""

    def __init__(
        self,
        token: str,
        now: Callable[[], float],
        seed: int = 1,
        rate_limit: int = 350,
        rate_window_seconds: float = 300.0,
        *,
        client_id: str = "sandbox-lightspeed-client",
        client_secret: str = "sandbox-lightspeed-secret",
        token_seconds: float = TOKEN_SECONDS,
    ) -> None:
        self.token = token
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_seconds = token_seconds
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self._now = now
        self._seed = seed
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """No customers, the version counter back at its start."""
        with self._lock:
            self.customers: dict[str, dict[str, Any]] = {}
            self.version = 0
            # Every version handed out, in order, with the customer it went to: a page is a
            # bisect and a short walk, not a sort of every customer (a million for P4).
            self._versions: list[int] = []
            self._owners: list[str] = []
            self._random = random.Random(self._seed)
            self._window_start = self._now()
            self._window_used = 0
            self._seeded = 0
            self._realistic = 0
            self.access_tokens: dict[str, float] = {}  # access token -> when it expires
            self.refresh_tokens: set[str] = set()  # each valid exactly once
            self.refresh_requests = 0  # POST /api/1.0/token with grant_type=refresh_token

    def _bump(self, customer_id: str) -> int:
        # Shared with other resources in the real API, so never +1 per customer.
        self.version += self._random.randint(1, 7)
        self._versions.append(self.version)
        self._owners.append(customer_id)
        return self.version

    def upsert_customer(self, customer_id: str | None = None, **fields: Any) -> str:
        """Create or change a customer (first_name, last_name, email, phone, customer_code)."""
        with self._lock:
            new_id = customer_id or str(uuid.UUID(int=self._random.getrandbits(128), version=4))
            base = self.customers.get(new_id, {"id": new_id, "deleted_at": None})
            self.customers[new_id] = {**base, **fields, "id": new_id, "version": self._bump(new_id)}
            return new_id

    def delete_customer(self, customer_id: str) -> None:
        """Mark a customer deleted (deleted_at set, new version): the feed shows it once more."""
        with self._lock:
            customer = self.customers[customer_id]
            customer["deleted_at"] = email_time(self._now())
            customer["version"] = self._bump(customer_id)

    def forget_customer(self, customer_id: str) -> bool:
        """Gone without a trace: no deleted_at, no new version (a deletion the feed missed)."""
        with self._lock:
            return self.customers.pop(customer_id, None) is not None

    def seed_customers(self, count: int) -> list[str]:
        """count synthetic customers from datagen; returns their ids."""
        with self._lock:
            start, self._seeded = self._seeded, self._seeded + count
            return [
                self.upsert_customer(
                    first_name=person.first_name,
                    last_name=person.last_name,
                    email=person.email,
                    phone=person.mobile_phone,
                    customer_code=person.member_number,
                )
                for person in datagen.contacts(count, seed=self._seed, start=start)
            ]

    def seed_realistic_customers(self, count: int) -> list[str]:
        """count customers shaped like a real retailer's (datagen.lightspeed_customers): a
        mobile and a phone in local formats, blanks, names in many scripts; returns their ids.
        Slower per customer to apply than seed_customers' E.164 numbers (the P4 seed)."""
        with self._lock:
            start, self._realistic = self._realistic, self._realistic + count
            return [
                self.upsert_customer(**fields)
                for fields in datagen.lightspeed_customers(count, seed=self._seed, start=start)
            ]

    def counts(self) -> dict[str, int]:
        """How much state there is, for the admin route."""
        with self._lock:
            deleted = sum(1 for c in self.customers.values() if c["deleted_at"])
            return {"customers": len(self.customers), "deleted": deleted, "version": self.version}

    @staticmethod
    def error(status: int, message: str) -> Response:
        """The error body a fault answers with ({"error", "message"}, like the 429's)."""
        return json_response(status, {"error": reason_of(status), "message": message})

    @staticmethod
    def item_id(request: Request) -> str | None:
        """Reads carry no id to reject."""
        return None

    # --- OAuth 2.0 ----------------------------------------------------------------------

    def issue_refresh_token(self) -> str:
        """A refresh token as the authorisation-code exchange hands one to an integrator."""
        refresh = secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens.add(refresh)
        return refresh

    def expire_access_tokens(self) -> None:
        """Every OAuth access token issued so far expires now (a 401 on its next use)."""
        with self._lock:
            self.access_tokens = dict.fromkeys(self.access_tokens, self._now())

    def _token(self, request: Request) -> Response:
        """POST /api/1.0/token: refresh_token, client_id, client_secret, grant_type (form)."""
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return json_response(401, {"error": "invalid_client"})
        if form.get("grant_type") != "refresh_token":
            return json_response(400, {"error": "unsupported_grant_type"})
        with self._lock:
            self.refresh_requests += 1
            used = form.get("refresh_token", "")
            if used not in self.refresh_tokens:
                # RFC 6749 5.2's answer; Lightspeed documents only "authentication failures".
                return json_response(400, {"error": "invalid_grant"})
            self.refresh_tokens.discard(used)  # revoked once the next one is issued
            access, refresh = secrets.token_urlsafe(30), secrets.token_urlsafe(30)
            expires = self._now() + self.token_seconds
            self.access_tokens[access] = expires
            self.refresh_tokens.add(refresh)
        answer = {
            "access_token": access,
            "token_type": "Bearer",
            "expires": int(expires),
            "expires_in": int(self.token_seconds),
            "refresh_token": refresh,
            "domain_prefix": "sandbox",
            "scope": "",
        }
        return json_response(200, answer)

    def _authorized(self, request: Request) -> bool:
        value = request.header("authorization")
        if not value.startswith("Bearer "):
            return False
        token = value.removeprefix("Bearer ")
        if token == self.token:
            return True  # a personal token
        with self._lock:
            expires = self.access_tokens.get(token)
        return expires is not None and self._now() < expires

    def handle(self, request: Request) -> Response:
        """Bearer auth, the rate window, then GET /api/2.0/customers or .../customers/{id}."""
        if request.path.rstrip("/") == TOKEN_PATH and request.method == "POST":
            return self._token(request)
        if not self._authorized(request):
            return self.error(401, "invalid or missing bearer token")
        limited, headers = self._rate()
        if limited:
            response = json_response(
                429, {"error": "Too Many Requests", "message": "Rate limiting enforced"}
            )
            response.headers.update(headers)
            response.headers["Retry-After"] = email_time(
                self._window_start + self.rate_window_seconds
            )
            return response
        response = self._route(request)
        response.headers.update(headers)
        return response

    def _route(self, request: Request) -> Response:
        path = request.routed_path.rstrip("/")
        if request.method == "GET" and path == COLLECTION:
            return self._page(request)
        prefix, _, customer_id = path.rpartition("/")
        if request.method == "GET" and prefix == COLLECTION and customer_id:
            return self._one(unquote(customer_id))
        return self.error(404, f"no route {request.method} {request.path}")

    def _one(self, customer_id: str) -> Response:
        """{"data": customer}; 404 for an id never seen, forgotten, or deleted."""
        with self._lock:
            customer = self.customers.get(customer_id)
            found = None if customer is None or customer["deleted_at"] else dict(customer)
        if found is None:
            return self.error(404, "customer not found")
        return json_response(200, {"data": found})

    def _rate(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            now = self._now()
            if now >= self._window_start + self.rate_window_seconds:
                self._window_start, self._window_used = now, 0
            self._window_used += 1
            remaining = max(0, self.rate_limit - self._window_used)
        # The two headers Lightspeed documents (rate_limiting); no reset header is documented.
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(remaining),
        }
        return self._window_used > self.rate_limit, headers

    def _page(self, request: Request) -> Response:
        try:
            after = int(request.query.get("after") or 0)
            size = int(request.query.get("page_size") or PAGE_SIZE_DEFAULT)
        except ValueError:
            return self.error(400, "after and page_size must be integers")
        if not 1 <= size <= PAGE_SIZE_MAX:
            return self.error(400, f"page_size must be 1..{PAGE_SIZE_MAX}")
        deleted = request.query.get("deleted", "false").lower() == "true"
        with self._lock:
            data = self._newer(after, size, deleted)
        if not data:
            return json_response(200, {"data": [], "version": {"min": None, "max": None}})
        span = {"min": data[0]["version"], "max": data[-1]["version"]}
        return json_response(200, {"data": data, "version": span})

    def _newer(self, after: int, size: int, deleted: bool) -> list[dict[str, Any]]:
        """Up to size customers whose current version is above after, in version order."""
        data: list[dict[str, Any]] = []
        position = bisect.bisect_right(self._versions, after)
        while len(data) < size and position < len(self._versions):
            customer = self.customers.get(self._owners[position])
            current = customer is not None and customer["version"] == self._versions[position]
            if current and customer is not None and (deleted or not customer["deleted_at"]):
                data.append(dict(customer))
            position += 1
        return data


def email_time(moment: float) -> str:
    """An HTTP-date (RFC 1123, GMT)."""
    return email.utils.formatdate(moment, usegmt=True)


def reason_of(status: int) -> str:
    """A short error name for a status."""
    names = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
    return names.get(status, "Error")
