"""Takings figures: a receipt's exact amounts, added up per store-day and compared to the cent."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent.core import models

ZERO = Decimal(0)
Tenders = tuple[tuple[str, Decimal], ...]  # (payment type, amount), sorted, no zero amounts


def money(value: Decimal) -> str:
    """An exact decimal string: never an exponent, never "-0"."""
    text = format(value, "f")
    return text[1:] if value == 0 and text.startswith("-") else text


def _tenders(sums: Mapping[str, Decimal]) -> Tenders:
    return tuple(sorted((kind, value) for kind, value in sums.items() if value != 0))


@dataclass(frozen=True)
class Amounts:
    """What one receipt (or one part a cloud holds of it) is worth: gross, tax, tenders."""

    gross: Decimal = ZERO
    tax: Decimal = ZERO
    tenders: Tenders = ()

    def __add__(self, other: Amounts) -> Amounts:
        sums = dict(self.tenders)
        for kind, value in other.tenders:
            sums[kind] = sums.get(kind, ZERO) + value
        return Amounts(self.gross + other.gross, self.tax + other.tax, _tenders(sums))

    def to_json(self) -> str:
        return json.dumps(
            {
                "gross": money(self.gross),
                "tax": money(self.tax),
                "tenders": {kind: money(value) for kind, value in self.tenders},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Amounts:
        raw = json.loads(text)
        tenders = {kind: Decimal(value) for kind, value in raw["tenders"].items()}
        return cls(Decimal(raw["gross"]), Decimal(raw["tax"]), _tenders(tenders))


def amounts_from(gross: Decimal, tax: Decimal, tenders: Mapping[str, Decimal]) -> Amounts:
    """Amounts from sums a cloud's record was added up to (read-back: agent/ops/reconcile.py)."""
    return Amounts(gross, tax, _tenders(tenders))


def amounts_of(receipt: models.Receipt) -> Amounts:
    """The receipt's own figures: its total, its lines' tax (returns negative), its payments."""
    tax = sum((_signed_tax(item) for item in receipt.items), ZERO)
    sums: dict[str, Decimal] = {}
    for payment in receipt.payment_methods:
        sums[payment.type] = sums.get(payment.type, ZERO) + payment.value
    return Amounts(receipt.total_gross_price, tax, _tenders(sums))


def _signed_tax(item: models.ReceiptItem) -> Decimal:
    """A RETURN line's tax is positive on the wire (like its price) but is given back."""
    return -abs(item.tax_amount) if item.type == "RETURN" else item.tax_amount


@dataclass
class Totals:
    """Receipts added up: count, gross, tax, tenders by payment type, and the returns among them.

    A receipt is a return when its own gross is below zero (a refund); a cloud's parts of one
    receipt are summed first (figures.sum_parts), so an amendment never counts as a return.
    """

    count: int = 0
    gross: Decimal = ZERO
    tax: Decimal = ZERO
    tenders: dict[str, Decimal] = field(default_factory=dict)
    returns_count: int = 0
    returns_gross: Decimal = ZERO

    def add(self, amounts: Amounts) -> None:
        self.count += 1
        self.gross += amounts.gross
        self.tax += amounts.tax
        for kind, value in amounts.tenders:
            self.tenders[kind] = self.tenders.get(kind, ZERO) + value
        if amounts.gross < 0:
            self.returns_count += 1
            self.returns_gross += amounts.gross

    def same_as(self, other: Totals) -> bool:
        """Equal to the cent (and beyond): counts, money and every tender."""
        return self.wire() == other.wire()

    def wire(self) -> dict[str, Any]:
        """The JSON shape of the reconciliation (money as exact decimal strings)."""
        return {
            "count": self.count,
            "gross": money(self.gross),
            "tax": money(self.tax),
            "tenders": {kind: money(v) for kind, v in sorted(self.tenders.items()) if v != 0},
            "returns": {"count": self.returns_count, "gross": money(self.returns_gross)},
        }


def totals(many: Iterable[Amounts]) -> Totals:
    result = Totals()
    for amounts in many:
        result.add(amounts)
    return result


def sum_parts(parts: Iterable[Amounts]) -> Amounts:
    result = Amounts()
    for part in parts:
        result = result + part
    return result


SentPart = tuple[str, str, float]  # (the key it went out under, its Amounts as JSON, when)


def held_of(parts: Iterable[SentPart], *, append_only: bool) -> Amounts | None:
    """What a cloud holds of one receipt, from the parts it acknowledged; None: nothing.

    An append-only cloud ignores a key it has seen, so it holds the first part sent under each
    key, all of them added up (the receipt and its difference receipts). A cloud that replaces
    by id holds the part it acknowledged last.
    """
    ordered = sorted(parts, key=lambda part: part[2])
    if not ordered:
        return None
    if not append_only:
        return Amounts.from_json(ordered[-1][1])
    first: dict[str, str] = {}
    for key, amounts, _ in ordered:
        first.setdefault(key, amounts)
    return sum_parts(Amounts.from_json(text) for text in first.values())


@dataclass(frozen=True)
class Facts:
    """What the reports say about a receipt besides its amounts (never about a person)."""

    business_date: str  # the till's local date of createdDate
    created_date: str
    receipt_number: str
    store_id: str
    currency: str
    order_id: str | None
    refund_of: str | None
    amounts: Amounts


def facts_of(receipt: models.Receipt) -> Facts:
    created = receipt.created_date.isoformat()
    return Facts(
        business_date=created[:10],
        created_date=created,
        receipt_number=receipt.receipt_number,
        store_id=receipt.store_external_id,
        currency=receipt.currency,
        order_id=receipt.order_id,
        refund_of=receipt.original_receipt_id,
        amounts=amounts_of(receipt),
    )


def kinds(facts: Facts, revision: int, split_orders: frozenset[str]) -> list[str]:
    """purchase or refund, then split (one of several receipts of an order, or several
    tenders) and amended (a later revision) where they apply."""
    found = ["refund" if facts.amounts.gross < 0 or facts.refund_of else "purchase"]
    if (facts.order_id is not None and facts.order_id in split_orders) or len(
        facts.amounts.tenders
    ) > 1:
        found.append("split")
    if revision > 1:
        found.append("amended")
    return found
