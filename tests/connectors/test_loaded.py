"""Loaded on its documented model: categories and items first, orders by POST, PATCH to amend,
refunds as their own order, exact money, OAuth2 access + refresh tokens kept in the vault."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
import requests

from agent.connectors import loaded
from agent.connectors.base import MemoryVault
from agent.core.errors import AuthError, ConfigError, RejectedError, RetryableError
from agent.core.models import OutboundMessage, Receipt
from tests.connectors.conftest import destination, read_secret
from tests.connectors.test_engage import receipt


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def connector(
    http: requests.Session,
    base_url: str = "http://127.0.0.1:9/",
    vault=None,
    clock=None,
    **options: Any,
):
    options.setdefault("client_id", "sandbox-client")
    settings = loaded.parse_settings(destination("loaded", base_url, **options), read_secret)
    clock = clock or Clock()
    return loaded.create(settings, http, vault or MemoryVault(), clock, clock)


def message(key: str = "R-1", revision: int = 1, body: Receipt | None = None) -> OutboundMessage:
    body = body or receipt(matchKey="a@example.com", matchKeyType="email")
    return OutboundMessage(
        kind="receipt",
        idempotency_key=key,
        revision=revision,
        receipt=msgspec.structs.replace(body, unique_receipt_id=key),
    )


def line(
    sku: str, quantity: int, paid: str, tax: str = "0", kind: str = "PURCHASE", **extra: Any
) -> dict[str, Any]:
    return {
        "type": kind,
        "sku": sku,
        "articleNumber": sku,
        "articleName": f"Test article {sku}",
        "quantity": quantity,
        "grossPaidPrice": paid,
        "taxAmount": tax,
        "taxPercent": "25",
        **extra,
    }


def a_receipt(
    items: list[dict[str, Any]], total: str, payments: list[dict[str, Any]] | None = None
) -> Receipt:
    raw = {
        "uniqueReceiptId": "R-X",
        "receiptNumber": "1",
        "createdDate": "2026-11-23T10:00:00+01:00",
        "storeExternalId": "S1",
        "currency": "SEK",
        "totalGrossPrice": total,
        "paymentMethods": payments or [{"type": "card", "value": total}],
        "items": items,
    }
    return msgspec.convert(raw, Receipt)


def test_client_id_is_required(http: requests.Session):
    with pytest.raises(ConfigError, match="client_id"):
        connector(http, client_id="")


def test_a_refresh_token_grant_needs_its_secret(http: requests.Session):
    with pytest.raises(ConfigError, match="refresh_token_secret"):
        connector(http, grant="refresh_token")


def test_order_has_the_external_id_and_no_person(http: requests.Session):
    order = connector(http).order_payload(
        receipt(matchKey="a@example.com", matchKeyType="email"), "R-1"
    )
    assert order["externalId"] == "R-1"
    assert order["status"] == "Completed"
    assert order["items"] == [
        {
            "externalId": "A",
            "requestedTime": "2026-11-23T10:00:00+01:00",
            "quantity": 1,
            "unitPrice": Decimal("19.90"),
            "unitTax": Decimal("3.98"),
        }
    ]
    assert order["tenders"][0]["invoiceAmount"] == Decimal("19.90")
    assert "a@example.com" not in str(order)


def test_an_external_id_over_255_is_rejected(http: requests.Session):
    with pytest.raises(RejectedError):
        connector(http).order_payload(receipt(), "x" * 256)


@pytest.mark.parametrize(
    ("paid", "tax", "quantity"),
    [
        ("10.00", "2.00", 3),
        ("-10.00", "-2.00", 3),
        ("0.05", "0.01", 7),
        ("123456789012345.6789", "1", 1),
        ("7", "0", 2),
    ],
)
def test_a_line_splits_into_unit_prices_that_add_up_exactly(paid: str, tax: str, quantity: int):
    groups = loaded.split_exact(Decimal(paid), Decimal(tax), quantity)
    assert sum(n for n, _, _ in groups) == quantity
    assert sum(n * unit for n, unit, _ in groups) == Decimal(paid)
    assert sum(n * unit_tax for n, _, unit_tax in groups) == Decimal(tax)


def test_a_refund_is_its_own_order_with_positive_prices_and_negative_tenders(
    http: requests.Session,
):
    refund = a_receipt([line("A", -2, "20.00", "4.00", kind="RETURN")], "-20.00")
    order = connector(http).order_payload(refund, "R-RET")
    assert order["status"] == "Refunded"
    assert order["items"][0] | {} == {
        "externalId": "A",
        "requestedTime": "2026-11-23T10:00:00+01:00",
        "quantity": 2,
        "unitPrice": Decimal("10.00"),
        "unitTax": Decimal("2.00"),
        "settlementStatus": "Refunded",
    }
    assert order["tenders"][0]["invoiceAmount"] == Decimal("-20.00")


def test_items_and_categories_are_created_before_the_order(sandbox: Any, http, vault):
    conn = connector(http, sandbox.url, vault)
    conn.send(message("R-1", body=a_receipt([line("A", 1, "5.00", articleGroup="Drinks")], "5.00")))
    writes = [(r.method, r.path) for r in sandbox.requests if r.path.startswith("/v1/pos")]
    assert writes == [
        ("POST", "/v1/pos/categories"),
        ("POST", "/v1/pos/items"),
        ("POST", "/v1/pos/orders"),
    ]
    assert sandbox.loaded.items["A"]["categoryExternalId"] == "Drinks"
    assert sandbox.loaded.categories["Drinks"]["name"] == "Drinks"


def test_each_item_is_created_once_and_updated_when_its_price_changes(sandbox: Any, http, vault):
    conn = connector(http, sandbox.url, vault)
    conn.send(message("R-1", body=a_receipt([line("A", 1, "5.00")], "5.00")))
    conn.send(message("R-2", body=a_receipt([line("A", 2, "10.00")], "10.00")))
    again = connector(http, sandbox.url, vault)  # a restart: the vault remembers
    again.send(message("R-3", body=a_receipt([line("A", 1, "5.00")], "5.00")))
    assert sandbox.loaded.writes["items"] == 1
    again.send(message("R-4", body=a_receipt([line("A", 1, "6.00")], "6.00")))
    assert sandbox.loaded.writes["items"] == 2
    assert sandbox.loaded.items["A"]["price"] == 6.0
    assert [r.method for r in sandbox.requests if r.path.startswith("/v1/pos/items")] == [
        "POST",
        "PATCH",
    ]


def test_an_item_made_before_the_link_was_saved_is_not_a_failure(sandbox: Any, http, vault):
    connector(http, sandbox.url).send(message("R-1"))  # a memory vault: the links are lost
    conn = connector(http, sandbox.url, vault)
    conn.send(message("R-2"))
    assert set(sandbox.loaded.orders) == {"R-1", "R-2"}


def test_an_amendment_patches_the_whole_order(sandbox: Any, http, vault):
    conn = connector(http, sandbox.url, vault)
    conn.send(message("R-1", body=a_receipt([line("A", 1, "5.00"), line("B", 1, "5.00")], "10.00")))
    conn.send(message("R-1", 2, body=a_receipt([line("A", 1, "5.00")], "5.00")))
    order = sandbox.loaded.orders["R-1"]
    assert [i["externalId"] for i in order["items"]] == ["A"]
    assert order["tenders"][0]["invoiceAmount"] == 5.0
    assert [r.method for r in sandbox.requests if "/orders" in r.path] == ["POST", "PATCH"]


def test_an_amendment_of_an_order_loaded_never_got_creates_it(sandbox: Any, http, vault):
    conn = connector(http, sandbox.url, vault)
    conn.send(message("R-9", 2))
    assert "R-9" in sandbox.loaded.orders


def test_a_resend_after_a_lost_answer_is_no_failure(sandbox: Any, http, vault):
    conn = connector(http, sandbox.url, vault)
    conn.probe()
    sandbox.faults.lost_next(api="loaded")  # the category is created, its answer lost
    with pytest.raises(RetryableError):
        conn.send(message("R-1"))
    conn.send(message("R-1"))  # the category exists already: found, not a failure
    sandbox.faults.lost_next(api="loaded")  # now the order is created and its answer lost
    with pytest.raises(RetryableError):
        conn.send(message("R-2"))
    conn.send(message("R-2"))
    assert set(sandbox.loaded.orders) == {"R-1", "R-2"}
    order_calls = [(r.method, r.status) for r in sandbox.requests if "/orders" in r.path]
    assert order_calls[-4:] == [("POST", 201), ("POST", 409), ("GET", 200), ("PATCH", 200)]


def test_money_arrives_to_the_last_digit(sandbox: Any, http, vault):
    body = a_receipt([line("A", 1, "123456789012345.6789", "0.0001")], "123456789012345.6789")
    connector(http, sandbox.url, vault).send(message("R-BIG", body=body))
    sent = next(r for r in sandbox.requests if r.path == "/v1/pos/orders")
    assert b'"unitPrice":123456789012345.6789' in sent.body
    assert b'"invoiceAmount":123456789012345.6789' in sent.body


def test_the_token_is_kept_sealed_and_refreshed_before_expiry(sandbox: Any, http, vault):
    clock = Clock()
    conn = connector(http, sandbox.url, vault, clock)
    conn.send(message("R-1"))
    conn.send(message("R-2"))
    assert conn.tokens.refreshes == 1
    saved = vault.load_token("loaded")
    assert saved is not None
    assert saved["refresh_token"]
    assert saved["access_token"].encode() not in vault.path.read_bytes()
    clock.now += 3600 - 30  # inside the 60 s margin: refreshed with the refresh token
    conn.send(message("R-3"))
    assert conn.tokens.refreshes == 2
    grants = [r.body for r in sandbox.requests if r.path == "/oauth/token"]
    assert b"grant_type=refresh_token" in grants[-1]


def test_a_restart_uses_the_saved_token(sandbox: Any, http, vault):
    connector(http, sandbox.url, vault).send(message("R-1"))
    again = connector(http, sandbox.url, vault)
    again.send(message("R-2"))
    assert again.tokens.refreshes == 0


def test_a_401_renews_the_token_once_then_is_auth(sandbox: Any, http, vault):
    conn = connector(http, sandbox.url, vault)
    conn.send(message("R-1"))
    sandbox.loaded.revoke_tokens()
    conn.send(message("R-2"))
    assert conn.tokens.refreshes == 2
    sandbox.faults.set_auth_failure("loaded")
    with pytest.raises(AuthError):
        conn.send(message("R-3"))


def test_a_refused_refresh_token_is_an_auth_halt_with_a_clear_message(sandbox: Any, http, vault):
    settings = loaded.parse_settings(
        destination("loaded", sandbox.url, client_id="sandbox-client", grant="refresh_token"),
        lambda name: {
            "loaded-refresh-token": "not-a-token",
            "loaded-client-secret": "sandbox-secret",
        }[name],
    )
    conn = loaded.create(settings, http, vault)
    with pytest.raises(AuthError, match=r"refused the refresh token.*new credentials"):
        conn.send(message("R-1"))


def test_an_initial_refresh_token_is_spent_once_and_its_successor_kept(sandbox: Any, http, vault):
    first = sandbox.loaded.issue_refresh_token()
    secrets = {"loaded-refresh-token": first, "loaded-client-secret": "sandbox-secret"}
    settings = loaded.parse_settings(
        destination("loaded", sandbox.url, client_id="sandbox-client", grant="refresh_token"),
        secrets.__getitem__,
    )
    loaded.create(settings, http, vault).send(message("R-1"))
    saved = vault.load_token("loaded")
    assert saved is not None
    assert saved["refresh_token"] != first
    sandbox.loaded.revoke_tokens()
    loaded.create(settings, http, vault).send(message("R-2"))  # the saved one, not the spent one
    assert set(sandbox.loaded.orders) == {"R-1", "R-2"}


def test_a_probe_from_the_installer_never_spends_a_refresh_token(sandbox: Any, http):
    secrets = {
        "loaded-refresh-token": sandbox.loaded.issue_refresh_token(),
        "loaded-client-secret": "sandbox-secret",
    }
    settings = loaded.parse_settings(
        destination("loaded", sandbox.url, client_id="sandbox-client", grant="refresh_token"),
        secrets.__getitem__,
    )
    with pytest.raises(ConfigError, match="single-use"):
        loaded.create(settings, http, MemoryVault()).probe()


def test_every_error_carries_the_error_id(sandbox: Any, http, vault):
    conn = connector(http, sandbox.url, vault)
    sandbox.faults.reject_ids(["R-X"], status=400, api="loaded")
    with pytest.raises(RejectedError) as raised:
        conn.send(message("R-X"))
    assert raised.value.cloud_error_id
    assert len(raised.value.cloud_error_id) >= 8


def test_wrong_client_secret_is_auth(sandbox: Any, http):
    settings = loaded.LoadedSettings(
        name="loaded", base_url=sandbox.url, client_id="sandbox-client", client_secret="no"
    )
    with pytest.raises(AuthError):
        loaded.create(settings, http).probe()


def test_read_back_of_an_order(sandbox: Any, http, vault):
    conn = connector(http, sandbox.url, vault)
    conn.send(message("R-1"))
    assert conn.fetch_order("R-1")["externalId"] == "R-1"
    assert conn.fetch_order("R-NONE") is None


def test_any_receipt_id_goes_as_an_ascii_idempotency_header(sandbox: Any, http, vault):
    import hashlib

    conn = connector(http, sandbox.url, vault)
    key = "S042-Łódź-000124"
    conn.send(message(key))
    sent = [r for r in sandbox.requests if "/pos/orders" in r.path and r.method == "POST"][-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["idempotency-key"] == hashlib.sha256(key.encode()).hexdigest()
    assert key in sandbox.loaded.orders
