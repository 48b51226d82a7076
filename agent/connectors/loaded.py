"""Loaded-style analytics: sales upserted by externalId, behind an OAuth2 client token."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from agent import __version__
from agent.config import DestinationSettings
from agent.connectors.base import (
    Options,
    ReadSecret,
    Sender,
    SendResult,
    call,
    idempotency_header,
    join,
    json_body,
    money_as_numbers,
    rate_limit,
)
from agent.errors import AuthError, RejectedError, RetryableError
from agent.models import OutboundMessage, Receipt, to_builtins

log = logging.getLogger(__name__)

MAX_EXTERNAL_ID = 255


@dataclass(frozen=True)
class LoadedSettings:
    """One Loaded account: where, the OAuth2 client, and the paths its API uses."""

    name: str
    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    token_path: str = "/oauth/token"
    sales_path: str = "/pos/sales"
    upsert: str = "put_eid"  # "put_eid": PUT <sales_path>/eid:<id>; "post": POST <sales_path>
    token_margin_seconds: float = 60.0
    scope: str = ""
    user_agent: str = f"TillAgent/{__version__}"


def parse_settings(destination: DestinationSettings, read_secret: ReadSecret) -> LoadedSettings:
    """LoadedSettings from [destinations.<name>] (profile applied); ConfigError lists problems."""
    opts = Options(destination, read_secret)
    settings = LoadedSettings(
        name=destination.name,
        base_url=opts.base_url,
        client_id=opts.text("client_id", ""),
        client_secret=opts.secret("client_secret_secret", "loaded-client-secret"),
        token_path=opts.text("token_path", "/oauth/token"),
        sales_path=opts.text("sales_path", "/pos/sales"),
        upsert=opts.choice("upsert", "put_eid", ("put_eid", "post")),
        token_margin_seconds=opts.number("token_margin_seconds", 60.0, high=3600),
        scope=opts.text("scope", ""),
        user_agent=opts.text("user_agent", f"TillAgent/{__version__}"),
    )
    if not settings.client_id:
        opts.problems.append(f"{opts.prefix}.client_id: required (got '')")
    opts.finish()
    return settings


@dataclass
class _Token:
    value: str = field(default="", repr=False)
    expires_at: float = 0.0  # monotonic


class LoadedConnector:
    """Maps receipts to sales; keeps one access token, refreshed before expiry or after a 401."""

    def __init__(
        self,
        settings: LoadedSettings,
        http: requests.Session,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self._http = http
        self._monotonic = monotonic
        self._token = _Token()
        self._lock = threading.Lock()
        self.token_requests = 0

    def probe(self) -> None:
        """A fresh token proves the client credentials."""
        self._fetch_token()

    def send(self, message: OutboundMessage) -> SendResult:
        """Upsert one sale by externalId (= the idempotency key); one retry after a 401."""
        if message.receipt is None:
            raise RejectedError(f"{self.name}: takes receipts only", connector=self.name)
        body = self.sale_payload(message.receipt, message.idempotency_key, message.revision)
        try:
            response = self._upsert(body, message.idempotency_key)
        except AuthError:
            self._token = _Token()  # the token may have been revoked early: one fresh try
            response = self._upsert(body, message.idempotency_key)
        remaining, reset = rate_limit(response)
        return SendResult(response.status_code, _sale_id(response), remaining, reset)

    def _upsert(self, body: dict[str, Any], external_id: str) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {self._access_token()}",
            "User-Agent": self.settings.user_agent,
            "Idempotency-Key": idempotency_header(external_id),
        }
        sales = join(self.settings.base_url, self.settings.sales_path)
        if self.settings.upsert == "put_eid":
            url = f"{sales.rstrip('/')}/eid:{quote(external_id, safe='')}"
            return call(self._http, "PUT", url, connector=self.name, json=body, headers=headers)
        return call(self._http, "POST", sales, connector=self.name, json=body, headers=headers)

    def _access_token(self) -> str:
        with self._lock:
            if self._monotonic() >= self._token.expires_at - self.settings.token_margin_seconds:
                self._token = self._fetch_token()
            return self._token.value

    def _fetch_token(self) -> _Token:
        """client_credentials grant; the token endpoint's 400/401 both mean bad credentials."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret,
        }
        if self.settings.scope:
            form["scope"] = self.settings.scope
        url = join(self.settings.base_url, self.settings.token_path)
        self.token_requests += 1
        try:
            response = call(
                self._http,
                "POST",
                url,
                connector=self.name,
                data=form,
                headers={"User-Agent": self.settings.user_agent},
            )
        except RejectedError as exc:  # invalid_client is a 400 in RFC 6749
            raise AuthError(
                str(exc), connector=self.name, status=exc.status, cloud_error_id=exc.cloud_error_id
            ) from exc
        return self._token_from(json_body(response, connector=self.name))

    def _token_from(self, body: Any) -> _Token:
        value = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise RetryableError(
                f"{self.name}: token reply without access_token", connector=self.name
            )
        expires = body.get("expires_in", 300)
        seconds = float(expires) if isinstance(expires, int | float) else 300.0
        return _Token(value, self._monotonic() + seconds)

    def sale_payload(self, receipt: Receipt, external_id: str, revision: int) -> dict[str, Any]:
        """The receipt as a sale: externalId is the idempotency key; no personal data at all."""
        if len(external_id) > MAX_EXTERNAL_ID:
            raise RejectedError(f"{self.name}: externalId over 255 chars", connector=self.name)
        body: dict[str, Any] = money_as_numbers(to_builtins(receipt))
        body.pop("contact", None)  # analytics needs no person: data minimisation
        body["externalId"] = external_id
        body["revision"] = revision
        body["hasContact"] = receipt.contact is not None
        return body


def _sale_id(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return str(value) if value is not None else None


def create(
    settings: LoadedSettings,
    http: requests.Session,
    monotonic: Callable[[], float] = time.monotonic,
) -> LoadedConnector:
    """The connector for one Loaded destination."""
    return LoadedConnector(settings, http, monotonic)


_AS_SENDER: type[Sender] = LoadedConnector
