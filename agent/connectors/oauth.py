"""OAuth2 access + refresh tokens for a connector: refreshed before expiry and after a 401, saved.

Shared by the clouds that use OAuth2 (Loaded, Lightspeed X-Series); not a cloud itself, so it is
not in REGISTRY. A refreshed pair is saved in the vault (sealed, one durable commit) before the
access token is used, because a rotating refresh token is single-use: the old one is revoked
the moment the new one is issued (Lightspeed's 2025-03 refresh-token change).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from agent.connectors.base import Vault, call, json_body
from agent.core.errors import AuthError, NotProbedError, RejectedError, RetryableError
from agent.core.failpoints import failpoint

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_SECONDS = 300.0  # a reply without expires_in: assume a short life


@dataclass(frozen=True)
class OAuthSettings:
    """Where tokens come from, with which credentials, and how early to refresh."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    initial_grant: str = "client_credentials"  # or "refresh_token": initial_refresh_token
    initial_refresh_token: str = field(default="", repr=False)
    margin_seconds: float = 60.0
    scope: str = ""
    user_agent: str = ""
    # What the shop must do when its refresh token is refused (used, revoked, expired).
    reauthorise: str = "the till needs new credentials: see docs/operations.md, 'Cloud credentials'"


class OAuthTokens:
    """One destination's token pair: in memory, mirrored in the vault, refreshed when due."""

    def __init__(
        self,
        name: str,
        settings: OAuthSettings,
        http: requests.Session,
        vault: Vault,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self._http = http
        self._vault = vault
        self._now = now
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._state: dict[str, Any] | None = None
        # When the access token is due, on the monotonic clock: the saved expiry is wall-clock
        # time (it must outlive a restart), read once; a clock step later changes nothing (R9).
        self._due = 0.0
        self.refreshes = 0  # token requests made (a test reads it)
        # A refresh token the endpoint refused never works again: it is not sent twice (no
        # loop against the token endpoint); the refusal is raised again until a new one comes.
        self._refused: tuple[str, AuthError] | None = None

    def access_token(self) -> str:
        """A usable access token: the saved one while it has margin left, else a fresh one."""
        with self._lock:
            state = self._current()
            if state is None or self._monotonic() >= self._due:
                state = self._renew(state)
            return str(state["access_token"])

    def invalidate(self) -> None:
        """The cloud refused the access token (401): the next access_token() refreshes."""
        with self._lock:
            self._due = 0.0

    def _seed(self) -> str:
        """Which configured refresh token a saved chain of refreshes started from (a hash)."""
        initial = self.settings.initial_refresh_token
        if self.settings.initial_grant != "refresh_token" or not initial:
            return ""
        return hashlib.sha256(initial.encode()).hexdigest()[:16]

    def _current(self) -> dict[str, Any] | None:
        if self._state is None:
            self._state = self._vault.load_token(self.name)
            seed = (self._state or {}).get("seed")
            if seed and seed != self._seed():
                # A new refresh token was configured (the shop authorised the app again): the
                # saved chain belongs to the old authorisation and is dropped.
                log.warning("%s: a new refresh token is configured; starting from it", self.name)
                self._state = None
            if self._state is not None:
                left = float(self._state.get("expires_at", 0)) - self._now()
                self._due = self._monotonic() + left - self.settings.margin_seconds
        return self._state

    def _renew(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """Refresh with the refresh token held; without one, the initial grant."""
        refresh = (state or {}).get("refresh_token") or ""
        if not refresh and self.settings.initial_grant == "refresh_token":
            refresh = self.settings.initial_refresh_token
        if not refresh:
            return self._store(self._grant({"grant_type": "client_credentials"}))
        if not self._vault.durable and self.settings.initial_grant == "refresh_token":
            raise NotProbedError(
                [
                    f"destinations.{self.name}: not probed here: its refresh token is single-use,"
                    " so only the running agent (whose vault keeps the next one) may spend it"
                ]
            )
        if self._refused is not None and self._refused[0] == refresh:
            raise self._refused[1]
        failpoint("oauth.before_refresh")
        try:
            reply = self._grant({"grant_type": "refresh_token", "refresh_token": refresh})
        except AuthError as exc:
            if self.settings.initial_grant != "client_credentials":
                self._refused = (refresh, exc)
                raise
            log.warning("%s: refresh token refused; asking for a new token", self.name)
            reply = self._grant({"grant_type": "client_credentials"})
        # The old refresh token is revoked now: a crash before the save below loses the only
        # valid one (docs/connectors.md, "Tokens": the known window).
        failpoint("oauth.before_save")
        return self._store(reply)

    def _grant(self, form: dict[str, str]) -> dict[str, Any]:
        """POST the token endpoint; a refused grant (400/401 per RFC 6749) is an auth halt."""
        form = {**form, "client_id": self.settings.client_id}
        form["client_secret"] = self.settings.client_secret
        if self.settings.scope and form["grant_type"] == "client_credentials":
            form["scope"] = self.settings.scope
        self.refreshes += 1
        try:
            response = call(
                self._http,
                "POST",
                self.settings.token_url,
                connector=self.name,
                data=form,
                headers={"User-Agent": self.settings.user_agent, "Accept": "application/json"},
            )
        except (RejectedError, AuthError) as exc:
            what = (
                "the refresh token (used before, revoked or expired)"
                if form["grant_type"] == "refresh_token"
                else f"the {form['grant_type']} grant"
            )
            raise AuthError(
                f"{self.name}: the token endpoint refused {what} "
                f"(HTTP {exc.status}, {exc.cloud_error_id or 'no error code'}); "
                f"{self.settings.reauthorise}",
                connector=self.name,
                status=exc.status,
                cloud_error_id=exc.cloud_error_id,
                body_excerpt=exc.body_excerpt,
            ) from exc
        body = json_body(response, connector=self.name)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise RetryableError(
                f"{self.name}: token reply without access_token", connector=self.name
            )
        return body

    def _store(self, reply: dict[str, Any]) -> dict[str, Any]:
        """The new pair, saved (one durable commit) before anyone uses it."""
        expires = reply.get("expires_in")
        seconds = float(expires) if isinstance(expires, int | float) else DEFAULT_EXPIRES_SECONDS
        state = {
            "access_token": reply["access_token"],
            "refresh_token": reply.get("refresh_token") or (self._state or {}).get("refresh_token"),
            "expires_at": self._now() + seconds,
        }
        if self._seed():
            state["seed"] = self._seed()
        self._vault.save_token(self.name, state)
        self._state = state
        self._refused = None
        self._due = self._monotonic() + seconds - self.settings.margin_seconds
        log.info("%s: access token renewed, valid for %.0f s", self.name, seconds)
        return state


def call_with_token(
    tokens: OAuthTokens,
    http: requests.Session,
    method: str,
    url: str,
    *,
    connector: str,
    **kwargs: Any,
) -> requests.Response:
    """One authorised request; after a 401 the token is renewed and the request made once more."""
    headers = dict(kwargs.pop("headers", {}))
    for attempt in (1, 2):
        headers["Authorization"] = f"Bearer {tokens.access_token()}"
        try:
            return call(http, method, url, connector=connector, headers=headers, **kwargs)
        except AuthError as exc:
            if attempt == 2 or exc.status != 401:
                raise
            tokens.invalidate()  # expired or revoked early: one fresh token, one more try
    raise AssertionError("unreachable")
