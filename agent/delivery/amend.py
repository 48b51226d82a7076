"""Amendments for append-only clouds: the difference of two revisions as a receipt of its own."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import msgspec

from agent.core import models

LineKey = tuple[str, str, str]  # sku, articleNumber, articleName


def derived_id(unique_receipt_id: str, revision: int) -> str:
    """The id of revision n's difference receipt: stable, so a resend is a duplicate."""
    return f"{unique_receipt_id}~r{revision}"


def difference(
    delivered: models.Receipt, latest: models.Receipt, revision: int
) -> models.Receipt | None:
    """A receipt that, added to `delivered`, makes the cloud's totals equal `latest`.

    Lines that grew are PURCHASE lines, lines that shrank are RETURN lines (negative quantity,
    positive price, as Engage wants returns); a price or tax change alone is an ADJUSTMENT
    line, and so is a change of tenders alone (a zero line with the tenders' differences), so
    the cloud's tax and tender totals end equal too. None when nothing a cloud counts changed.
    """
    items = _difference_items(_totals(delivered), _totals(latest))
    payments = _difference_payments(delivered, latest)
    total = latest.total_gross_price - delivered.total_gross_price
    if not items and not payments and total == 0:
        return None
    return msgspec.structs.replace(
        latest,
        unique_receipt_id=derived_id(latest.unique_receipt_id, revision),
        receipt_number=f"{latest.receipt_number}-{revision}",
        total_gross_price=total,
        items=items
        or [_adjustment(("ADJUSTMENT", "", "Amendment"), 0, total, Decimal(0), Decimal(0))],
        payment_methods=payments or [models.PaymentMethod(type="adjustment", value=total)],
        original_receipt_id=latest.unique_receipt_id,
    )


Line = tuple[int, Decimal, Decimal, Decimal]  # quantity, paid, tax, tax percent
ZERO: Line = (0, Decimal(0), Decimal(0), Decimal(0))


def _totals(receipt: models.Receipt) -> dict[LineKey, Line]:
    """Quantity, paid amount and tax per article (returns negative), and its tax rate."""
    sums: dict[LineKey, Line] = {}
    for item in receipt.items:
        sign = -1 if item.type == "RETURN" else 1
        key = (item.sku, item.article_number, item.article_name)
        q, paid, tax, _ = sums.get(key, ZERO)
        sums[key] = (
            q + abs(item.quantity) * sign,
            paid + abs(item.gross_paid_price) * sign,
            tax + abs(item.tax_amount) * sign,
            item.tax_percent,
        )
    return sums


def _difference_items(
    before: dict[LineKey, Line], after: dict[LineKey, Line]
) -> list[models.ReceiptItem]:
    items = []
    for key in sorted(set(before) | set(after)):
        q0, paid0, tax0, rate0 = before.get(key, ZERO)
        q1, paid1, tax1, rate1 = after.get(key, ZERO)
        if q1 != q0 or paid1 != paid0 or tax1 != tax0:
            rate = rate1 if key in after else rate0
            items.append(_adjustment(key, q1 - q0, paid1 - paid0, tax1 - tax0, rate))
    return items


def _adjustment(
    key: LineKey, quantity: int, paid: Decimal, tax: Decimal, tax_percent: Decimal
) -> models.ReceiptItem:
    sku, article_number, article_name = key
    if quantity > 0:
        kind = "PURCHASE"
    elif quantity < 0:
        kind = "RETURN"
    else:
        kind = "ADJUSTMENT"
    amount = abs(paid) if kind == "RETURN" else paid
    return models.ReceiptItem(
        type=kind,  # type: ignore[arg-type]
        sku=sku or "ADJUSTMENT",
        article_number=article_number,
        article_name=article_name,
        quantity=quantity,
        gross_paid_price=amount,
        tax_amount=abs(tax) if kind == "RETURN" else tax,
        tax_percent=tax_percent,
    )


def _difference_payments(
    before: models.Receipt, after: models.Receipt
) -> list[models.PaymentMethod]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for payment in after.payment_methods:
        sums[payment.type] += payment.value
    for payment in before.payment_methods:
        sums[payment.type] -= payment.value
    return [models.PaymentMethod(type=t, value=v) for t, v in sorted(sums.items()) if v != 0]
