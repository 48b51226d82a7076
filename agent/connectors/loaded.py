"""Loaded (POS analytics): categories, items and orders by externalId, behind OAuth2 tokens.

Loaded's model (api.loadedreports.com, "Tutorial" and "External IDs"): an order names items
that must already exist, each item lives in a category, every record is created by POST with
an externalId and addressed later as `eid:<externalId>`. So before an order goes, the
categories and items it names are created (once: the vault remembers what was created) or
updated when their name or price changed. A refund is its own order ("Refunds").
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import requests

from agent import __version__
from agent.connectors.base import (
    MemoryVault,
    Options,
    ReadSecret,
    Sender,
    SendResult,
    Vault,
    idempotency_header,
    join,
    rate_limit,
)
from agent.connectors.oauth import OAuthSettings, OAuthTokens, call_with_token
from agent.core.config import CloudKind, DestinationSettings
from agent.core.errors import RejectedError
from agent.core.figures import Amounts, amounts_from
from agent.core.models import OutboundMessage, Receipt, ReceiptItem

log = logging.getLogger(__name__)

MAX_EXTERNAL_ID = 255  # "an external ID can be any string value up to a maximum of 255"
NOT_FOUND = 404
# Loaded applies an order when it answers (no batch window): read back at once.
READBACK_AFTER_SECONDS = 0.0
# What Loaded is to the agent: every receipt, upserted by externalId. Loaded publishes no rate
# limit; we keep to 10 requests a second.
KIND = CloudKind(
    name="loaded",
    takes=frozenset({"receipts"}),
    amends="replace",
    requests_per_second=10.0,
    stores_tokens=True,  # connectors.build hands this module the vault
)


@dataclass(frozen=True)
class LoadedSettings:
    """One Loaded account: where, its OAuth2 client, and the choices its documents leave open."""

    name: str
    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    token_url: str = ""  # "": <base_url>/oauth/token (our assumption; undocumented)
    grant: str = "client_credentials"  # or "refresh_token": a refresh token Loaded handed over
    refresh_token: str = field(default="", repr=False)
    token_margin_seconds: float = 60.0
    scope: str = ""
    api_root: str = "/v1/pos"
    default_category: str = "till-agent"  # items whose line names no articleGroup
    default_category_name: str = "Till Agent"
    order_status: str = "Completed"
    refund_status: str = "Refunded"
    readback_after_seconds: float = READBACK_AFTER_SECONDS
    user_agent: str = f"TillAgent/{__version__}"


def parse_settings(destination: DestinationSettings, read_secret: ReadSecret) -> LoadedSettings:
    """LoadedSettings from [destinations.<name>] (profile applied); ConfigError lists problems."""
    opts = Options(destination, read_secret)
    grant = opts.choice("grant", "client_credentials", ("client_credentials", "refresh_token"))
    settings = LoadedSettings(
        name=destination.name,
        base_url=opts.base_url,
        client_id=opts.text("client_id", ""),
        client_secret=opts.secret("client_secret_secret", "loaded-client-secret"),
        token_url=opts.text("token_url", ""),
        grant=grant,
        refresh_token=(
            opts.secret("refresh_token_secret", "loaded-refresh-token")
            if grant == "refresh_token"
            else ""
        ),
        token_margin_seconds=opts.number("token_margin_seconds", 60.0, high=86400),
        scope=opts.text("scope", ""),
        api_root=opts.text("api_root", "/v1/pos"),
        default_category=opts.text("default_category", "till-agent"),
        default_category_name=opts.text("default_category_name", "Till Agent"),
        order_status=opts.text("order_status", "Completed"),
        refund_status=opts.text("refund_status", "Refunded"),
        readback_after_seconds=opts.number(
            "readback_after_seconds", READBACK_AFTER_SECONDS, high=86400
        ),
        user_agent=opts.text("user_agent", f"TillAgent/{__version__}"),
    )
    if not settings.client_id:
        opts.problems.append(f"{opts.prefix}.client_id: required (got '')")
    opts.finish()
    return settings


@dataclass(frozen=True)
class CatalogueEntry:
    """A category or item as Loaded keeps it: its externalId and the body that creates it."""

    kind: str  # "categories" | "items"
    external_id: str
    body: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.body, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class LoadedConnector:
    """Maps receipts to Loaded orders; keeps its catalogue in step; renews its OAuth2 token."""

    def __init__(
        self,
        settings: LoadedSettings,
        http: requests.Session,
        vault: Vault | None = None,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self._http = http
        self._vault = vault or MemoryVault()
        self.tokens = OAuthTokens(
            settings.name,
            OAuthSettings(
                token_url=settings.token_url or join(settings.base_url, "/oauth/token"),
                client_id=settings.client_id,
                client_secret=settings.client_secret,
                initial_grant=settings.grant,
                initial_refresh_token=settings.refresh_token,
                margin_seconds=settings.token_margin_seconds,
                scope=settings.scope,
                user_agent=settings.user_agent,
            ),
            http,
            self._vault,
            now,
            monotonic,
        )

    # --- Sender -------------------------------------------------------------------------

    def probe(self) -> None:
        """One authenticated read (the default category, there or not): a token alone may come
        from the vault without a word to Loaded, and proves nothing about reaching it."""
        self._exists("categories", self.settings.default_category)

    def send(self, message: OutboundMessage) -> SendResult:
        """The catalogue entries the receipt names, then the order (created, or replaced)."""
        if message.receipt is None:
            raise RejectedError(f"{self.name}: takes receipts only", connector=self.name)
        order = self.order_payload(message.receipt, message.idempotency_key)
        for entry in self.catalogue(message.receipt):
            self._keep(entry)
        if message.revision > 1:
            response = self._replace_or_create(order)
        else:
            response = self._create_or_replace(order)
        remaining, reset = rate_limit(response)
        return SendResult(response.status_code, f"eid:{order['externalId']}", remaining, reset)

    # --- orders -------------------------------------------------------------------------

    def _create_or_replace(self, order: dict[str, Any]) -> requests.Response:
        """POST; refused because it exists (an earlier attempt whose answer was lost): PATCH."""
        try:
            return self._request("POST", "orders", json=order)
        except RejectedError:
            if not self._exists("orders", order["externalId"]):
                raise
            return self._request("PATCH", self._eid("orders", order["externalId"]), json=order)

    def _replace_or_create(self, order: dict[str, Any]) -> requests.Response:
        """An amendment: PATCH the whole order (positional items); unknown to Loaded: POST."""
        try:
            return self._request("PATCH", self._eid("orders", order["externalId"]), json=order)
        except RejectedError as exc:
            if exc.status != NOT_FOUND:
                raise
            return self._request("POST", "orders", json=order)

    def fetch_order(self, external_id: str) -> dict[str, Any] | None:
        """GET orders/eid:<id>: the order as Loaded holds it, None when unknown (read-back)."""
        try:
            response = self._request("GET", self._eid("orders", external_id))
        except RejectedError as exc:
            if exc.status == NOT_FOUND:
                return None
            raise
        body = response.json()
        return body if isinstance(body, dict) else None

    # --- read-back (agent/ops/reconcile.py) -------------------------------------------------

    @property
    def readback_after_seconds(self) -> float:
        """How long after its 2xx an order is read back (setting; Loaded: at once)."""
        return self.settings.readback_after_seconds

    def read_back(self, key: str) -> Amounts | None:
        """What Loaded holds of the order sent under key, added up; None: Loaded has no such
        order. One GET orders/eid:<key> ("External IDs"); its money read as exact decimals."""
        try:
            response = self._request("GET", self._eid("orders", key))
        except RejectedError as exc:
            if exc.status == NOT_FOUND:
                return None
            raise
        body = response.json(parse_float=Decimal)
        return order_amounts(body, self.settings.refund_status) if isinstance(body, dict) else None

    def _exists(self, kind: str, external_id: str) -> bool:
        try:
            self._request("GET", self._eid(kind, external_id))
        except RejectedError as exc:
            if exc.status == NOT_FOUND:
                return False
            raise
        return True

    # --- the catalogue ------------------------------------------------------------------

    def _keep(self, entry: CatalogueEntry) -> None:
        """Create what Loaded lacks, update what changed; remember it so each goes once."""
        known = self._vault.links(self.name, entry.kind).get(entry.external_id)
        if known == entry.fingerprint:
            return
        if known is None:
            try:
                self._request("POST", entry.kind, json=entry.body)
            except RejectedError:
                if not self._exists(entry.kind, entry.external_id):
                    raise  # refused for another reason: the receipt is dead-lettered with it
                self._update(entry)  # it exists already (created before the link was saved)
        else:
            self._update(entry)
        self._vault.save_link(self.name, entry.kind, entry.external_id, entry.fingerprint)

    def _update(self, entry: CatalogueEntry) -> None:
        changes = {k: v for k, v in entry.body.items() if k != "externalId"}
        self._request("PATCH", self._eid(entry.kind, entry.external_id), json=changes)

    def catalogue(self, receipt: Receipt) -> list[CatalogueEntry]:
        """The categories, then the items, a receipt names (each once, first line wins)."""
        categories: dict[str, CatalogueEntry] = {}
        items: dict[str, CatalogueEntry] = {}
        for line in receipt.items:
            group = line.article_group or self.settings.default_category
            name = line.article_group or self.settings.default_category_name
            categories.setdefault(group, self._entry("categories", group, {"name": name}))
            body: dict[str, Any] = {"categoryExternalId": group, "name": line.article_name}
            body["price"] = list_price(line)
            items.setdefault(line.sku, self._entry("items", line.sku, body))
        return [*categories.values(), *items.values()]

    def _entry(self, kind: str, external_id: str, body: dict[str, Any]) -> CatalogueEntry:
        check_external_id(external_id, self.name)
        return CatalogueEntry(kind, external_id, {**body, "externalId": external_id})

    # --- mapping ------------------------------------------------------------------------

    def order_payload(self, receipt: Receipt, external_id: str) -> dict[str, Any]:
        """The receipt as a Loaded order; no person at all (analytics needs none)."""
        check_external_id(external_id, self.name)
        at = receipt.created_date.isoformat()
        refund = all(line.type == "RETURN" for line in receipt.items)
        items = [part for line in receipt.items for part in order_items(line, at)]
        tenders = [
            {
                "externalId": f"{external_id}-t{index}",
                "tenderedAt": at,
                "type": payment.type,
                "invoiceAmount": payment.value,
            }
            for index, payment in enumerate(receipt.payment_methods, start=1)
        ]
        return {
            "externalId": external_id,
            "createdAt": at,
            "completedAt": at,
            "status": self.settings.refund_status if refund else self.settings.order_status,
            "items": items,
            "tenders": tenders,
        }

    # --- plumbing -----------------------------------------------------------------------

    def _eid(self, kind: str, external_id: str) -> str:
        return f"{kind}/eid:{quote(external_id, safe='')}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = join(self.settings.base_url, f"{self.settings.api_root.rstrip('/')}/{path}")
        headers = {"User-Agent": self.settings.user_agent, "Accept": "application/json"}
        body = kwargs.get("json")
        if path.startswith("orders") and isinstance(body, dict):
            headers["Idempotency-Key"] = idempotency_header(str(body["externalId"]))
        return call_with_token(
            self.tokens, self._http, method, url, connector=self.name, headers=headers, **kwargs
        )


def order_amounts(order: dict[str, Any], refund_status: str) -> Amounts:
    """An order as Loaded holds it, added up as the till adds up a receipt: unit price x
    quantity, a refunded item (or a whole refund order) given back; tenders by type."""
    gross, tax = Decimal(0), Decimal(0)
    for item in order.get("items") or []:
        refunded = order.get("status") == refund_status or item.get("settlementStatus") == (
            "Refunded"
        )
        units = Decimal(str(item.get("quantity", 0))) * (-1 if refunded else 1)
        gross += Decimal(str(item.get("unitPrice", 0))) * units
        tax += Decimal(str(item.get("unitTax", 0))) * units
    tenders: dict[str, Decimal] = {}
    for tender in order.get("tenders") or []:
        kind = str(tender.get("type"))
        tenders[kind] = tenders.get(kind, Decimal(0)) + Decimal(str(tender["invoiceAmount"]))
    return amounts_from(gross, tax, tenders)


def check_external_id(external_id: str, connector: str) -> None:
    if len(external_id) > MAX_EXTERNAL_ID:
        raise RejectedError(
            f"{connector}: an externalId is at most {MAX_EXTERNAL_ID} characters",
            connector=connector,
        )


def list_price(line: ReceiptItem) -> Decimal:
    """An item's catalogue price: the unit price before discounts (our assumption, mapping.md)."""
    off = sum((abs(d.value) for d in line.discounts), Decimal(0))
    quantity = abs(line.quantity) or 1
    total = abs(line.gross_paid_price) + off
    return (total / quantity).quantize(_step(total)) if quantity > 1 else total


def order_items(line: ReceiptItem, at: str) -> Iterator[dict[str, Any]]:
    """One receipt line as order items whose unitPrice x quantity adds up to the cent.

    A line of 3 for 10.00 is 2 x 3.33 and 1 x 3.34 (and the same for its tax): Loaded's
    items carry a unit price, and a rounded one would change the money.
    """
    refund = line.type == "RETURN"
    paid = abs(line.gross_paid_price) if refund else line.gross_paid_price
    tax = abs(line.tax_amount) if refund else line.tax_amount
    for count, unit_price, unit_tax in split_exact(paid, tax, abs(line.quantity) or 1):
        item: dict[str, Any] = {
            "externalId": line.sku,
            "requestedTime": at,
            "quantity": count,
            "unitPrice": unit_price,
            "unitTax": unit_tax,
        }
        if refund:
            item["settlementStatus"] = "Refunded"
        yield item


def split_exact(total: Decimal, tax: Decimal, quantity: int) -> list[tuple[int, Decimal, Decimal]]:
    """(count, unit price, unit tax) groups: sum(count x unit) == total, the same for tax."""
    price_unit, price_extra, price_step = _share(total, quantity)
    tax_unit, tax_extra, tax_step = _share(tax, quantity)
    cuts = sorted({0, price_extra, tax_extra, quantity})
    groups = []
    for start, end in itertools.pairwise(cuts):
        unit = price_unit + (price_step if start < price_extra else 0)
        unit_tax = tax_unit + (tax_step if start < tax_extra else 0)
        groups.append((end - start, unit, unit_tax))
    return groups


def _share(amount: Decimal, quantity: int) -> tuple[Decimal, int, Decimal]:
    """amount / quantity as (unit, how many units get one step more, the step)."""
    step = _step(amount)
    sign = -1 if amount < 0 else 1
    units = int(abs(amount) / step)  # exact: amount is a whole number of steps
    base, extra = divmod(units, quantity)
    return (sign * base * step).quantize(step), extra, sign * step


def _step(amount: Decimal) -> Decimal:
    """The smallest unit the amount is written in (0.01 for 10.00, 1 for 7)."""
    exponent = amount.as_tuple().exponent
    return Decimal(1).scaleb(min(int(exponent), 0))


def create(
    settings: LoadedSettings,
    http: requests.Session,
    vault: Vault | None = None,
    now: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> LoadedConnector:
    """The connector for one Loaded destination."""
    return LoadedConnector(settings, http, vault, now, monotonic)


_AS_SENDER: type[Sender] = LoadedConnector
