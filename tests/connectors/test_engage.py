"""Engage mapping: receipt and contact shapes, phones, headers, settings, the changes feed."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import requests

from agent.connectors import engage
from agent.connectors.base import wire_json
from agent.core.errors import AuthError, RejectedError, RetryableError
from agent.core.models import Contact, OutboundMessage, Receipt
from tests.connectors.conftest import destination, read_secret

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def receipt(**contact: Any) -> Receipt:
    raw: dict[str, Any] = {
        "uniqueReceiptId": "R-1",
        "receiptNumber": "1",
        "createdDate": "2026-11-23T10:00:00+01:00",
        "storeExternalId": "S1",
        "currency": "SEK",
        "totalGrossPrice": "19.90",
        "paymentMethods": [{"type": "card", "value": "19.90"}],
        "items": [
            {
                "type": "PURCHASE",
                "sku": "A",
                "articleNumber": "A",
                "articleName": "Apple",
                "quantity": 1,
                "grossPaidPrice": "19.90",
                "taxAmount": "3.98",
                "taxPercent": "25",
            }
        ],
        "orderId": "O-1",
    }
    if contact:
        raw["contact"] = contact
    return msgspec.convert(raw, Receipt)


def connector(http: requests.Session, base_url: str = "http://127.0.0.1:9/", **options: Any):
    settings = engage.parse_settings(destination("engage", base_url, **options), read_secret)
    live = base_url != "http://127.0.0.1:9/"  # against the sandbox: its clock is the real one
    return engage.create(settings, http, now=None if live else lambda: NOW)


def test_settings_defaults_and_secret_not_in_repr(http: requests.Session):
    settings = connector(http).settings
    assert settings.api_version == "v2"
    assert settings.phone_format == "e164"
    assert "sandbox-engage-key" not in repr(settings)


def test_receipt_payload_money_as_numbers_and_order_as_extra_data(http: requests.Session):
    body = connector(http).receipt_payload(
        receipt(matchKey="0701234567", matchKeyType="mobilePhone"), None
    )
    assert body["totalGrossPrice"] == Decimal("19.90")
    assert b'"totalGrossPrice":19.90' in wire_json(body)
    assert body["items"][0]["taxPercent"] == 25
    assert body["extraData"] == [{"name": "orderId", "value": "O-1"}]
    assert body["contact"] == {
        "matchKey": "+46701234567",
        "matchKeyType": "mobilePhone",
        "contactType": "Member",
    }
    json.loads(wire_json(body))


def test_phone_without_plus_when_configured(http: requests.Session):
    conn = connector(http, phone_format="digits")
    assert conn.phone_out("070-123 45 67") == "46701234567"


def test_not_a_phone_is_rejected(http: requests.Session):
    with pytest.raises(RejectedError):
        connector(http).phone_out("hello")


def test_a_resolved_contact_goes_as_contact_id(http: requests.Session):
    body = connector(http).receipt_payload(receipt(localId="L-1"), "guid-1")
    assert body["contact"] == {"matchKey": "guid-1", "matchKeyType": "contactId"}


def test_an_unresolved_local_member_waits(http: requests.Session):
    with pytest.raises(RetryableError):
        connector(http).receipt_payload(receipt(localId="L-1"), None)


def test_contact_payload_leaves_empty_fields_out(http: requests.Session):
    body = connector(http).contact_payload(
        Contact(email="a@example.com", mobile_phone="0701234567", accepts_sms=True)
    )
    assert body == {
        "email": "a@example.com",
        "mobilePhone": "+46701234567",
        "preferences": {"acceptsSms": True},
        "contactType": "Member",
    }


def test_source_contact_flat_or_with_attributes(http: requests.Session):
    conn = connector(http)
    flat = conn.source_contact({"id": "g", "firstName": "A", "email": ""}, "g")
    nested = conn.source_contact({"id": "g", "attributes": {"firstName": "A"}}, "g")
    assert flat == nested
    assert flat.email is None


def test_engage_time_format(http: requests.Session):
    conn = connector(http, changes_utc_offset_minutes=60)
    assert conn._engage_time(NOW) == "2026-11-23 13:00:00.000"
    later = NOW + dt.timedelta(microseconds=1500)
    assert conn._engage_time(later) == "2026-11-23 13:00:00.001"
    assert conn._engage_time(later, round_up=True) == "2026-11-23 13:00:00.002"


def test_the_feed_cursor_round_trips():
    settings = engage.EngageSettings(name="e", base_url="x", api_key="k")
    feed = engage._Feed(NOW - dt.timedelta(days=3), 3600.0, NOW, 5)
    again = engage._Feed.decode(feed.encode(), settings, NOW)
    assert (again.start, again.window_seconds, again.offset) == (feed.start, 3600.0, 5)
    assert engage._Feed.decode("garbage", settings, NOW).start.year == 2000


def test_the_feed_overlaps_and_grows_back():
    settings = engage.EngageSettings(name="e", base_url="x", api_key="k")
    feed = engage._Feed(NOW - dt.timedelta(days=3), 3600.0, NOW)
    nxt = feed.advanced(settings)
    assert nxt.start == feed.end - dt.timedelta(seconds=300)
    assert nxt.window_seconds == 7200  # each window twice as wide as the last


def test_the_feed_stops_at_now():
    settings = engage.EngageSettings(name="e", base_url="x", api_key="k")
    feed = engage._Feed(NOW - dt.timedelta(minutes=1), 86400.0, NOW)
    assert feed.at_now
    assert feed.advanced(settings).start == feed.start  # never walks back past its start


def engage_date(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


def test_decimal_money_leaves_as_the_number_it_was_written_as():
    raw = wire_json({"value": Decimal("123456789012345.6789"), "small": Decimal("0.10")})
    assert raw == b'{"small":0.10,"value":123456789012345.6789}'


# --- against the sandbox cloud -----------------------------------------------------------


def test_headers_and_path(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url)
    message = OutboundMessage(
        kind="receipt",
        idempotency_key="R-1",
        receipt=receipt(matchKey="a@example.com", matchKeyType="email"),
    )
    conn.send(message)
    sent = [r for r in sandbox.requests if r.path.endswith("/receipts")][-1]
    assert sent.method == "POST"
    assert sent.path == "/api/v2/receipts"
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["apikey"] == "sandbox-engage-key"
    assert headers["content-type"].startswith("application/json")
    assert headers["user-agent"].startswith("TillAgent/")
    assert sent.json["uniqueReceiptId"] == "R-1"


def test_contact_create_then_lookup(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url)
    created = conn.create_contact(Contact(email="new@example.com"))
    assert conn.find_contact_id(email="new@example.com", mobile_phone=None) == created
    assert conn.find_contact_id(email="nobody@example.com", mobile_phone=None) is None


def test_send_contact_looks_before_it_creates(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url)
    message = OutboundMessage(
        kind="contact", idempotency_key="L-9", contact=Contact(email="twice@example.com")
    )
    first = conn.send(message)
    second = conn.send(message)
    assert first.cloud_id is not None
    assert first.cloud_id == second.cloud_id


def test_changes_window_narrows_on_the_cap(sandbox: Any, http: requests.Session):
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    conn = connector(http, sandbox.url, changes_window_hours=2.0, changes_start=start)
    sandbox.engage.add_contact(email="w@example.com")
    sandbox.faults.fail_next(400, count=2, api="engage")
    page = conn.fetch_contact_changes(None, 50)
    assert [c.email for c in page.contacts] == ["w@example.com"]
    asked = [r for r in sandbox.requests if r.path.endswith("/contacts/changes")]
    assert [r.status for r in asked[:3]] == [400, 400, 200]
    first = asked[2].query
    width = engage_date(first["toDate"]) - engage_date(first["fromDate"])
    assert abs(width - dt.timedelta(minutes=30)) <= dt.timedelta(
        milliseconds=1
    )  # 1 h, halved twice


def test_lookup_several_matches_is_409(sandbox: Any, http: requests.Session):
    sandbox.engage.add_contact(email="same@example.com")
    sandbox.engage.add_contact(email="same@example.com")
    with pytest.raises(RejectedError) as raised:
        connector(http, sandbox.url).find_contact_id(email="same@example.com", mobile_phone=None)
    assert raised.value.status == 409
    assert raised.value.cloud_error_id == "MultipleMatches"


def test_lookup_by_phone_sends_e164(sandbox: Any, http: requests.Session):
    cloud_id = sandbox.engage.add_contact(mobilePhone="+46701234567")
    found = connector(http, sandbox.url).find_contact_id(email=None, mobile_phone="070-123 45 67")
    assert found == cloud_id
    asked = [r for r in sandbox.requests if r.path.endswith("/contacts/id")][-1]
    assert asked.query["mobilePhone"] == "+46701234567"


def test_update_of_a_known_contact(sandbox: Any, http: requests.Session):
    cloud_id = sandbox.engage.add_contact(email="u@example.com")
    message = OutboundMessage(
        kind="contact",
        idempotency_key="L-3",
        contact=Contact(contact_id=cloud_id, first_name="Una"),
    )
    assert connector(http, sandbox.url).send(message).cloud_id == cloud_id
    assert sandbox.engage.contacts[cloud_id]["firstName"] == "Una"


def test_bulk_in_batches_of_bulk_max(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url, bulk_max=2)
    batches = conn.bulk_write([Contact(email=f"b{n}@example.com") for n in range(5)])
    assert len(batches) == 3
    assert conn.bulk_status(batches[0])["total"] == 2
    asked = [r for r in sandbox.requests if r.path.endswith("/contacts/bulk")]
    assert {r.method for r in asked} == {"POST"}
    assert asked[0].query["contactType"] == "Member"


def test_v3_paths(sandbox: Any, http: requests.Session):
    conn = connector(http, sandbox.url, api_version="v3")
    conn.create_contact(Contact(email="v3@example.com", store_external_id="S1"))
    asked = [r for r in sandbox.requests if r.method == "POST"][-1]
    assert asked.path == "/api/v3/contacts"
    assert asked.query["storeExternalId"] == "S1"


def test_the_changes_feed_reports_deletions(sandbox: Any, http: requests.Session):
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    kept = sandbox.engage.add_contact(email="k@example.com")
    gone = sandbox.engage.add_contact(email="g@example.com")
    sandbox.engage.delete_contact(gone)
    page = connector(http, sandbox.url, changes_start=start).fetch_contact_changes(None, 50)
    by_id = {c.contact_id: c for c in page.contacts}
    assert by_id[gone].deleted
    assert by_id[kept].email == "k@example.com"
    assert not page.has_more


def test_a_wrong_key_is_auth(sandbox: Any, http: requests.Session):
    settings = engage.EngageSettings(name="engage", base_url=sandbox.url, api_key="wrong")
    with pytest.raises(AuthError):
        engage.create(settings, http).probe()


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_a_return_goes_with_voyados_signs_and_the_sandbox_takes_it(version, sandbox, http):
    """A POS that signs a return its own way still reaches Engage as Voyado's return page has
    it: negative quantity, positive price and tax, negative total and payment."""
    base = receipt(matchKey="1234", matchKeyType="MemberNumber")
    item = msgspec.structs.replace(base.items[0], type="RETURN", quantity=2)
    refund = msgspec.structs.replace(base, unique_receipt_id=f"RET-{version}", items=[item])
    conn = connector(http, sandbox.url, api_version=version)
    conn.send(
        OutboundMessage(kind="receipt", idempotency_key=refund.unique_receipt_id, receipt=refund)
    )
    sent = sandbox.engage.receipts[refund.unique_receipt_id]
    assert sent["totalGrossPrice"] == -19.9
    assert sent["paymentMethods"][0]["value"] == -19.9
    assert (sent["items"][0]["quantity"], sent["items"][0]["grossPaidPrice"]) == (-2, 19.9)
    assert sent["contact"]["matchKeyType"] == "memberNumber"
    assert all(r.headers.get("Content-Type") == "application/json" for r in sandbox.requests)


@pytest.mark.parametrize(("version", "method"), [("v2", "POST"), ("v3", "PATCH")])
def test_a_contact_update_is_post_in_v2_and_patch_in_v3(version, method, sandbox, http):
    cid = sandbox.engage.add_contact(email="u@example.com")
    conn = connector(http, sandbox.url, api_version=version)
    change = Contact(contact_id=cid, first_name="Updated")
    conn.send(OutboundMessage(kind="contact", idempotency_key="loc_1", contact=change))
    asked = [r for r in sandbox.requests if r.path == f"/api/{version}/contacts/{cid}"]
    assert [r.method for r in asked] == [method]
    assert sandbox.engage.contacts[cid]["firstName"] == "Updated"
    other = "POST" if method == "PATCH" else "PATCH"
    answer = http.request(
        other,
        f"{sandbox.url}/api/{version}/contacts/{cid}",
        json={"firstName": "X"},
        headers={"apikey": "sandbox-engage-key", "User-Agent": "T/1"},
    )
    assert answer.status_code == 405  # the sandbox takes only the version's documented verb


def test_a_tenant_without_the_changes_feed_gets_words_not_a_retry(sandbox: Any, http):
    sandbox.engage.changes_enabled = False
    conn = connector(http, sandbox.url)
    with pytest.raises(RejectedError, match="not activated for this Engage tenant") as caught:
        conn.fetch_contact_changes(None, 50)
    assert isinstance(caught.value, engage.FeedUnavailableError)
    assert len([r for r in sandbox.requests if r.path.endswith("/contacts/changes")]) == 1


def test_a_contact_id_goes_into_the_path_as_one_quoted_segment(sandbox: Any, http):
    conn = connector(http, sandbox.url)
    hostile = "../../../loaded/pos/sales/eid:PWNED?x=1"
    message = OutboundMessage(
        kind="contact",
        idempotency_key="L-1",
        contact=Contact(email="zz.p@example.com", contact_id=hostile),
    )
    with pytest.raises(RejectedError) as refused:
        conn.send(message)
    assert refused.value.status == 404
    (sent,) = [r for r in sandbox.requests if r.api != "admin"]
    assert sent.api == "engage"
    assert sent.path.startswith("/api/v2/contacts/")
    assert not sandbox.loaded.orders


@pytest.mark.parametrize("store", ["S042-Łódź", " S042", "S042\u202e"])
def test_a_store_id_no_header_can_carry_is_left_out_of_the_create(sandbox: Any, http, store):
    conn = connector(http, sandbox.url)
    created = conn.create_contact(Contact(email="zz.s@example.com", store_external_id=store))
    assert created
    sent = [r for r in sandbox.requests if r.path == "/api/v2/contacts"][-1]
    assert "storeexternalid" not in {k.lower() for k in sent.headers}


def test_a_store_id_a_header_can_carry_goes_as_it_is(sandbox: Any, http):
    conn = connector(http, sandbox.url)
    conn.create_contact(Contact(email="zz.t@example.com", store_external_id="S042"))
    sent = [r for r in sandbox.requests if r.path == "/api/v2/contacts"][-1]
    assert {k.lower(): v for k, v in sent.headers.items()}["storeexternalid"] == "S042"


def test_an_id_from_the_changes_feed_that_names_nothing_is_no_contact(sandbox: Any, http):
    conn = connector(http, sandbox.url)
    assert conn.fetch_contact("..") is None
    assert not [r for r in sandbox.requests if r.api == "engage"]
