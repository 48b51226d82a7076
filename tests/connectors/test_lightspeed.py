"""Lightspeed mapping: customer fields, deletions, the version cursor, rate-limit headers."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from agent.connectors import lightspeed
from agent.errors import ConfigError, RejectedError
from tests.connectors.conftest import destination, read_secret


def connector(http: requests.Session, base_url: str = "http://127.0.0.1:9/", **options: Any):
    dest = destination("lightspeed", base_url, **options)
    return lightspeed.create(lightspeed.parse_settings(dest, read_secret), http)


def test_customer_fields(http: requests.Session):
    contact = connector(http).source_contact(
        {
            "id": "u1",
            "first_name": "A",
            "last_name": "B",
            "email": "a@example.com",
            "mobile": "",
            "phone": "0701234567",
            "customer_code": "M-1",
            "deleted_at": None,
        }
    )
    assert (contact.contact_id, contact.mobile_phone, contact.member_number) == (
        "u1",
        "0701234567",
        "M-1",
    )
    assert not contact.deleted


def test_deleted_at_is_a_deletion(http: requests.Session):
    contact = connector(http).source_contact({"id": "u1", "deleted_at": "2026-01-01T00:00:00Z"})
    assert contact.deleted
    assert contact.email is None


def test_page_size_is_capped_at_200(http: requests.Session):
    with pytest.raises(ConfigError, match="page_size"):
        connector(http, page_size=500)


def test_a_cursor_that_is_no_version(http: requests.Session):
    with pytest.raises(RejectedError):
        connector(http).fetch_contact_changes("abc", 10)


def test_pages_to_the_end(sandbox: Any, http: requests.Session):
    sandbox.lightspeed.seed_customers(450)
    conn = connector(http, sandbox.url)
    cursor, seen, more = None, 0, True
    while more:
        page = conn.fetch_contact_changes(cursor, 200)
        seen += len(page.contacts)
        cursor, more = page.cursor, page.has_more
    assert seen == 450
    assert cursor is not None
    assert cursor.isdigit()
    sent = [r for r in sandbox.requests if r.path == "/api/2.0/customers"][-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["authorization"] == "Bearer sandbox-lightspeed-token"


def test_deletions_and_rate_limit_headers(sandbox: Any, http: requests.Session):
    ids = sandbox.lightspeed.seed_customers(3)
    conn = connector(http, sandbox.url)
    first = conn.fetch_page(None, 200)
    sandbox.lightspeed.delete_customer(ids[0])
    again = conn.fetch_contact_changes(first.page.cursor, 200)
    assert [c.deleted for c in again.contacts] == [True]
    assert first.rate_limit_remaining is not None
    assert conn.last_rate_limit[0] is not None


def test_the_list_asks_for_deleted_customers_too(sandbox: Any, http: requests.Session):
    sandbox.lightspeed.seed_customers(2)
    connector(http, sandbox.url).fetch_contact_changes(None, 200)
    sent = [r for r in sandbox.requests if r.path == "/api/2.0/customers"][-1]
    assert sent.query["deleted"] == "true"


def test_fetch_contact_by_id(sandbox: Any, http: requests.Session):
    ids = sandbox.lightspeed.seed_customers(3)
    conn = connector(http, sandbox.url)
    found = conn.fetch_contact(ids[0])
    assert found is not None
    assert found.contact_id == ids[0]
    assert found.mobile_phone == sandbox.lightspeed.customers[ids[0]]["phone"]
    assert sandbox.requests[-1].path == f"/api/2.0/customers/{ids[0]}"
    sandbox.lightspeed.delete_customer(ids[1])
    sandbox.lightspeed.forget_customer(ids[2])
    assert conn.fetch_contact(ids[1]) is None
    assert conn.fetch_contact(ids[2]) is None


def test_fetch_contact_errors_other_than_404_are_raised(sandbox: Any, http: requests.Session):
    from agent.errors import RetryableError

    ids = sandbox.lightspeed.seed_customers(1)
    conn = connector(http, sandbox.url)
    sandbox.faults.fail_next(500, api="lightspeed")
    with pytest.raises(RetryableError):
        conn.fetch_contact(ids[0])
    sandbox.faults.fail_next(400, api="lightspeed")
    with pytest.raises(RejectedError):
        conn.fetch_contact(ids[0])


def test_both_numbers_are_kept_and_blank_ones_are_none(http: requests.Session):
    conn = connector(http)
    both = conn.source_contact({"id": "u1", "mobile": "021 555 00001", "phone": "(09) 555 0001"})
    assert (both.mobile_phone, both.other_phone) == ("021 555 00001", "(09) 555 0001")
    landline = conn.source_contact({"id": "u2", "mobile": " ", "phone": "64-9-555-0002"})
    assert (landline.mobile_phone, landline.other_phone) == ("64-9-555-0002", None)
    neither = conn.source_contact({"id": "u3", "mobile": "", "phone": None, "email": ""})
    assert (neither.mobile_phone, neither.other_phone, neither.email) == (None, None, None)
