"""Loaded mapping: the sale by externalId, the token cached, refreshed on expiry and on a 401."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import requests

from agent.connectors import loaded
from agent.errors import AuthError, ConfigError, RejectedError
from agent.models import OutboundMessage, Receipt
from tests.connectors.conftest import destination, read_secret
from tests.connectors.test_engage import receipt


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def connector(
    http: requests.Session,
    base_url: str = "http://127.0.0.1:9/",
    clock: Clock | None = None,
    **options: Any,
):
    options.setdefault("client_id", "sandbox-client")
    settings = loaded.parse_settings(destination("loaded", base_url, **options), read_secret)
    return loaded.create(settings, http, clock or Clock())


def test_client_id_is_required(http: requests.Session):
    with pytest.raises(ConfigError, match="client_id"):
        connector(http, client_id="")


def test_sale_has_the_external_id_and_no_person(http: requests.Session):
    sale = connector(http).sale_payload(
        receipt(matchKey="a@example.com", matchKeyType="Email"), "R-1", 2
    )
    assert sale["externalId"] == "R-1"
    assert sale["revision"] == 2
    assert "contact" not in sale
    assert sale["hasContact"] is True
    assert "a@example.com" not in str(sale)


def test_an_external_id_over_255_is_rejected(http: requests.Session):
    with pytest.raises(RejectedError):
        connector(http).sale_payload(receipt(), "x" * 256, 1)


def message(key: str = "R-1") -> OutboundMessage:
    return OutboundMessage(
        kind="receipt",
        idempotency_key=key,
        receipt=msgspec.structs.replace(receipt(), unique_receipt_id=key),
    )


def test_token_cached_and_refreshed_before_expiry(sandbox: Any, http: requests.Session):
    clock = Clock()
    conn = connector(http, sandbox.url, clock)
    conn.send(message("R-1"))
    conn.send(message("R-2"))
    assert conn.token_requests == 1
    clock.now += 100_000
    conn.send(message("R-3"))
    assert conn.token_requests == 2


def test_a_401_refreshes_once_then_is_auth(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url)
    conn.send(message("R-1"))
    sandbox.faults.fail_next(401, count=1, api="loaded")
    conn.send(message("R-2"))
    assert conn.token_requests == 2
    sandbox.faults.set_auth_failure("loaded")
    with pytest.raises(AuthError):
        conn.send(message("R-3"))


def test_sales_upserted_by_external_id(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url)
    conn.send(message("R-1"))
    conn.send(message("R-1"))
    assert len(sandbox.loaded.sales) == 1


def test_receipt_type_check():
    assert isinstance(receipt(), Receipt)


def test_every_error_carries_the_error_id(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url)
    sandbox.faults.reject_ids(["R-X"], status=400, api="loaded")
    with pytest.raises(RejectedError) as raised:
        conn.send(message("R-X"))
    assert raised.value.cloud_error_id
    assert len(raised.value.cloud_error_id) >= 8


def test_wrong_client_secret_is_auth(sandbox: Any, http: requests.Session):
    settings = loaded.LoadedSettings(
        name="loaded", base_url=sandbox.url, client_id="sandbox-client", client_secret="no"
    )
    with pytest.raises(AuthError):
        loaded.create(settings, http).probe()


def test_post_upsert_mode(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url, upsert="post")
    conn.send(message("R-P"))
    assert "R-P" in sandbox.loaded.sales
    assert [r.path for r in sandbox.requests if r.method == "POST"][-1] == "/pos/sales"


def test_any_receipt_id_goes_as_an_ascii_idempotency_header(sandbox: Any, http):
    import hashlib

    conn = connector(http, sandbox.url + "/loaded")
    key = "S042-Łódź-000124"
    conn.send(message(key))
    sent = [r for r in sandbox.requests if "/pos/sales" in r.path][-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["idempotency-key"] == hashlib.sha256(key.encode()).hexdigest()
    assert key in sandbox.loaded.sales
