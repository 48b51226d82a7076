"""Difference receipts: added to what the cloud holds, they make its totals the latest revision."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from agent.core import models
from agent.delivery import amend
from agent.intake import line_amount
from tests.conftest import make_receipt


def receipt(body: dict[str, object]) -> models.Receipt:
    return msgspec.convert(body, models.Receipt, strict=False)


def diff_of(first: models.Receipt, second: models.Receipt) -> models.Receipt:
    diff = amend.difference(first, second, revision=2)
    assert diff is not None
    return diff


def cloud_total(*receipts: models.Receipt) -> Decimal:
    return sum((line_amount(i) for r in receipts for i in r.items), Decimal(0))


def test_an_added_line_is_sent_as_a_purchase_of_that_line():
    first, second = receipt(make_receipt(lines=2)), receipt(make_receipt(lines=3))
    diff = diff_of(first, second)
    assert diff.unique_receipt_id == "R-0001~r2"
    assert diff.original_receipt_id == "R-0001"
    assert [(i.type, i.sku, i.quantity) for i in diff.items] == [("PURCHASE", "SKU-2", 1)]
    assert diff.total_gross_price == Decimal("10.00")
    assert cloud_total(first, diff) == cloud_total(second)


def test_a_removed_line_is_sent_as_a_return():
    first, second = receipt(make_receipt(lines=3)), receipt(make_receipt(lines=2))
    diff = diff_of(first, second)
    assert [(i.type, i.quantity, i.gross_paid_price) for i in diff.items] == [
        ("RETURN", -1, Decimal("10.00"))
    ]
    assert cloud_total(first, diff) == cloud_total(second)
    assert diff.total_gross_price == Decimal("-10.00")


def test_a_price_change_alone_is_an_adjustment_line():
    body = make_receipt(lines=1)
    cheaper = make_receipt(lines=1)
    cheaper["items"][0]["grossPaidPrice"] = "7.50"
    cheaper["totalGrossPrice"] = "7.50"
    cheaper["paymentMethods"] = [{"type": "card", "value": "7.50"}]
    first, second = receipt(body), receipt(cheaper)
    diff = diff_of(first, second)
    assert [(i.type, i.quantity, i.gross_paid_price) for i in diff.items] == [
        ("ADJUSTMENT", 0, Decimal("-2.50"))
    ]
    assert [(p.type, p.value) for p in diff.payment_methods] == [("card", Decimal("-2.50"))]
    assert cloud_total(first, diff) == cloud_total(second)


def test_no_difference_in_what_a_cloud_counts_means_nothing_to_send():
    first = receipt(make_receipt(lines=2))
    renamed = make_receipt(lines=2)
    renamed["receiptNumber"] = "other"
    assert amend.difference(first, receipt(renamed), revision=2) is None


def test_a_change_of_tenders_alone_is_sent_so_the_clouds_tenders_end_equal():
    first = receipt(make_receipt(lines=2))
    cash = make_receipt(lines=2)
    cash["paymentMethods"] = [{"type": "cash", "value": "20.00"}]
    diff = diff_of(first, receipt(cash))
    assert diff.total_gross_price == 0
    assert [(i.type, i.quantity, i.gross_paid_price) for i in diff.items] == [
        ("ADJUSTMENT", 0, Decimal(0))
    ]
    assert sorted((p.type, p.value) for p in diff.payment_methods) == [
        ("card", Decimal("-20.00")),
        ("cash", Decimal("20.00")),
    ]


def test_a_change_of_tax_alone_is_an_adjustment_of_the_tax():
    first = receipt(make_receipt(lines=1))
    retaxed = make_receipt(lines=1)
    retaxed["items"][0]["taxAmount"] = "1.07"
    retaxed["items"][0]["taxPercent"] = "12"
    diff = diff_of(first, receipt(retaxed))
    assert [(i.type, i.gross_paid_price, i.tax_amount) for i in diff.items] == [
        ("ADJUSTMENT", Decimal(0), Decimal("-0.93"))
    ]
