"""Lightspeed X-Series: customers as a contact source, walked by the global version cursor.

Auth (x-series-api.lightspeedhq.com, "Authorization"): a personal token (`auth = "personal"`,
sent as it is), or OAuth 2.0 (`auth = "oauth"`): the retailer authorises the app once, the
refresh token it yields is configured, and the agent refreshes at `<base_url>/api/1.0/token`.
Each refresh revokes the refresh token used and issues the next (changelog "2025-03 Refresh
Token Flow Update"), so the new pair is sealed into the vault before it is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import requests

from agent import __version__
from agent.connectors.base import (
    ContactSource,
    MemoryVault,
    Options,
    ReadSecret,
    Vault,
    call,
    join,
    json_body,
    path_segment,
    rate_limit,
)
from agent.connectors.oauth import OAuthSettings, OAuthTokens, call_with_token
from agent.core.config import CloudKind, DestinationSettings
from agent.core.errors import RejectedError, RetryableError, UnsendableError
from agent.core.models import ContactPage, SourceContact

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 200
TOKEN_PATH = "/api/1.0/token"  # the changelog's refresh endpoint, on the retailer's domain
# What Lightspeed is to the agent: a contact source that takes nothing from the till. It allows
# 300 x registers + 50 requests per 5 minutes: 350 per 300 s for one register.
KIND = CloudKind(
    name="lightspeed",
    takes=frozenset(),
    amends="replace",
    requests_per_second=350 / 300,
    rate_window_seconds=300.0,
    contact_source=True,
    stores_tokens=True,  # connectors.build hands this module the vault
)


@dataclass(frozen=True)
class LightspeedSettings:
    """One retailer: where, its token (personal, or an OAuth client), how big a page may be."""

    name: str
    base_url: str
    token: str = field(default="", repr=False)  # auth = "personal"
    page_size: int = MAX_PAGE_SIZE
    phone_field: str = "mobile"  # falls back to "phone" when empty
    user_agent: str = f"TillAgent/{__version__}"
    auth: str = "personal"  # or "oauth"
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)  # the authorisation's first one
    token_url: str = ""  # "": <base_url>/api/1.0/token
    token_margin_seconds: float = 300.0


def parse_settings(destination: DestinationSettings, read_secret: ReadSecret) -> LightspeedSettings:
    """LightspeedSettings from [destinations.<name>] (profile applied); ConfigError if wrong."""
    opts = Options(destination, read_secret)
    auth = opts.choice("auth", "personal", ("personal", "oauth"))
    settings = LightspeedSettings(
        name=destination.name,
        base_url=opts.base_url,
        page_size=int(opts.number("page_size", MAX_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)),
        phone_field=opts.choice("phone_field", "mobile", ("mobile", "phone")),
        user_agent=opts.text("user_agent", f"TillAgent/{__version__}"),
        auth=auth,
    )
    if auth == "personal":
        settings = replace(settings, token=opts.secret("token_secret", "lightspeed-token"))
    else:
        settings = replace(
            settings,
            client_id=opts.text("client_id", ""),
            client_secret=opts.secret("client_secret_secret", "lightspeed-client-secret"),
            refresh_token=opts.secret("refresh_token_secret", "lightspeed-refresh-token"),
            token_url=opts.text("token_url", ""),
            token_margin_seconds=opts.number("token_margin_seconds", 300.0, high=86400),
        )
        if not settings.client_id:
            opts.problems.append(f"{opts.prefix}.client_id: required with auth = oauth (got '')")
    opts.finish()
    return settings


def oauth_settings(settings: LightspeedSettings) -> OAuthSettings:
    """The OAuth2 side of a Lightspeed destination: refresh tokens only, never a client grant."""
    secret = "refresh_token_secret"
    return OAuthSettings(
        token_url=settings.token_url or join(settings.base_url, TOKEN_PATH),
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        initial_grant="refresh_token",
        initial_refresh_token=settings.refresh_token,
        margin_seconds=settings.token_margin_seconds,
        user_agent=settings.user_agent,
        reauthorise=(
            "the retailer must authorise the app in Lightspeed again and the new refresh token "
            f"go into the secret named by destinations.{settings.name}.{secret} (then restart); "
            "see docs/operations.md, 'Cloud credentials'"
        ),
    )


@dataclass(frozen=True)
class SourcePage:
    """A page with the rate-limit headers that came with it."""

    page: ContactPage
    rate_limit_remaining: int | None
    rate_limit_reset_seconds: float | None


class LightspeedConnector:
    """GET /api/2.0/customers?after=<version>: deleted_at is a deletion; version.max the cursor."""

    # The feed from version 0 (deleted=true) is every customer: the sync's re-verification walk.
    lists_everything = True

    def __init__(
        self, settings: LightspeedSettings, http: requests.Session, vault: Vault | None = None
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self._http = http
        self.last_rate_limit: tuple[int | None, float | None] = (None, None)
        self.tokens: OAuthTokens | None = None
        if settings.auth == "oauth":
            self.tokens = OAuthTokens(
                settings.name, oauth_settings(settings), http, vault or MemoryVault()
            )

    def probe(self) -> None:
        """One customer: proves the token."""
        self._get({"page_size": "1"})

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        """Customers changed after cursor (a version); has_more until version.max is null."""
        return self.fetch_page(cursor, limit).page

    def fetch_page(self, cursor: str | None, limit: int) -> SourcePage:
        """fetch_contact_changes with X-RateLimit-Remaining, for a caller that paces itself."""
        after = cursor or "0"
        if not after.isdigit():
            raise RejectedError(f"{self.name}: cursor is not a version", connector=self.name)
        size = max(1, min(limit, self.settings.page_size))
        # Without deleted=true the list holds active customers only: deletions would never show.
        response = self._get({"after": after, "page_size": str(size), "deleted": "true"})
        data, version_max = self._parse(json_body(response, connector=self.name))
        contacts = [self.source_contact(customer) for customer in data]
        self.last_rate_limit = rate_limit(response)
        page = ContactPage(
            contacts=contacts,
            cursor=str(version_max) if version_max is not None else cursor,
            has_more=version_max is not None,
        )
        return SourcePage(page, *self.last_rate_limit)

    def count_contacts(self) -> None:
        """Not asked: the first download's estimate goes without a total."""
        return None

    def fetch_contact(self, contact_id: str) -> SourceContact | None:
        """GET /api/2.0/customers/{id} for the ghost sweep; None when gone (404 or deleted_at)."""
        try:
            segment = path_segment(contact_id, connector=self.name)
            response = self._get({}, f"/api/2.0/customers/{segment}")
        except UnsendableError:
            return None  # an id no URL can name is no customer we could ever fetch
        except RejectedError as exc:
            if exc.status == 404:
                return None
            raise
        body = json_body(response, connector=self.name)
        customer = body.get("data") if isinstance(body, dict) else None
        if not isinstance(customer, dict) or not customer.get("id"):
            raise RetryableError(f"{self.name}: customer reply has no data", connector=self.name)
        contact = self.source_contact(customer)
        return None if contact.deleted else contact

    def _get(self, params: dict[str, str], path: str = "/api/2.0/customers") -> requests.Response:
        headers = {"User-Agent": self.settings.user_agent, "Accept": "application/json"}
        url = join(self.settings.base_url, path)
        if self.tokens is not None:
            return call_with_token(
                self.tokens,
                self._http,
                "GET",
                url,
                connector=self.name,
                params=params,
                headers=headers,
            )
        headers["Authorization"] = f"Bearer {self.settings.token}"
        return call(self._http, "GET", url, connector=self.name, params=params, headers=headers)

    def _parse(self, body: Any) -> tuple[list[dict[str, Any]], int | None]:
        if not isinstance(body, dict) or not isinstance(body.get("data", []), list):
            raise RetryableError(f"{self.name}: customers reply not a page", connector=self.name)
        version = body.get("version") or {}
        version_max = version.get("max") if isinstance(version, dict) else None
        if version_max is not None and not isinstance(version_max, int):
            raise RetryableError(f"{self.name}: version.max not an integer", connector=self.name)
        data = [c for c in body.get("data") or [] if isinstance(c, dict) and c.get("id")]
        return data, version_max

    def source_contact(self, customer: dict[str, Any]) -> SourceContact:
        """A Lightspeed customer in our field names; deleted_at set means it is gone."""

        def text(key: str) -> str | None:
            value = customer.get(key)
            return str(value).strip() or None if value is not None else None

        if customer.get("deleted_at"):
            return SourceContact(contact_id=str(customer["id"]), deleted=True)
        other = "phone" if self.settings.phone_field == "mobile" else "mobile"
        first, second = text(self.settings.phone_field), text(other)
        return SourceContact(
            contact_id=str(customer["id"]),
            first_name=text("first_name"),
            last_name=text("last_name"),
            email=text("email"),
            mobile_phone=first or second,
            member_number=text("customer_code"),
            other_phone=second if first else None,
        )


def create(
    settings: LightspeedSettings, http: requests.Session, vault: Vault | None = None
) -> LightspeedConnector:
    """The connector for one Lightspeed retailer (vault: where an OAuth pair is kept)."""
    return LightspeedConnector(settings, http, vault)


_AS_SOURCE: type[ContactSource] = LightspeedConnector
