"""Simulated Voyado Engage over loopback: headers, receipts, contacts, lookup, bulk, changes."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from agent.sandbox import SandboxCloud

HEADERS = {
    "apikey": "sandbox-engage-key",
    "User-Agent": "SandboxTest/1",
    "Content-Type": "application/json",
}


def receipt(key: str = "R-1", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "contact": {"matchKey": "a@example.com", "matchKeyType": "email"},
        "uniqueReceiptId": key,
        "receiptNumber": "1001",
        "createdDate": "2026-11-23T06:00:00+01:00",
        "storeExternalId": "S1",
        "currency": "SEK",
        "totalGrossPrice": 100.0,
        "paymentMethods": [{"type": "CARD", "value": 100.0}],
        "items": [
            {
                "type": "PURCHASE",
                "sku": "SKU1",
                "quantity": 1,
                "grossPaidPrice": 100.0,
                "taxAmount": 20.0,
                "taxPercent": 25.0,
                "articleNumber": "A1",
                "articleName": "Thing",
            }
        ],
    }
    body.update(changes)
    return body


def post(http, sandbox: SandboxCloud, path: str, body: Any, **kwargs: Any):
    return http.post(f"{sandbox.url}/api/v2/{path}", json=body, headers=HEADERS, **kwargs)


def test_engage_keeps_the_first_receipt_of_a_unique_receipt_id(sandbox: SandboxCloud, http):
    assert post(http, sandbox, "receipts", receipt()).status_code == 202
    again = post(http, sandbox, "receipts", receipt(totalGrossPrice=5.0))
    assert again.status_code == 202
    assert again.json()["status"] == "duplicate"
    assert sandbox.engage.receipts["R-1"]["totalGrossPrice"] == 100.0
    assert sandbox.engage.duplicate_receipts == 1


def test_engage_v3_alias_takes_receipts(sandbox: SandboxCloud, http):
    url = f"{sandbox.url}/api/v3/receipts"
    assert http.post(url, json=receipt("R-3"), headers=HEADERS).status_code == 202
    assert "R-3" in sandbox.engage.receipts


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"uniqueReceiptId": None}, "uniqueReceiptId"),
        ({"items": []}, "items"),
        ({"paymentMethods": None}, "paymentMethods"),
        ({"contact": {"matchKey": "x", "matchKeyType": "Phone"}}, "matchKeyType"),
        ({"contact": {"matchKeyType": "email"}}, "matchKey"),
    ],
)
def test_engage_rejects_an_invalid_receipt_naming_the_problem(changes, named, sandbox, http):
    response = post(http, sandbox, "receipts", receipt(**changes))
    assert response.status_code == 400
    assert named in response.json()["message"]
    assert response.json()["errorCode"] == "InvalidReceipt"


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ({"type": "SALE"}, "type"),
        ({"quantity": 1.5}, "quantity"),
        ({"sku": None}, "sku"),
        ({"taxPercent": None}, "taxPercent"),
    ],
)
def test_engage_rejects_an_invalid_item(item, named, sandbox: SandboxCloud, http):
    body = receipt()
    body["items"][0].update(item)
    response = post(http, sandbox, "receipts", body)
    assert response.status_code == 400
    assert named in response.json()["message"]


def test_engage_accepts_every_match_key_type(sandbox: SandboxCloud, http):
    kinds = ["mobilePhone", "memberNumber", "contactId", "memberNumberWithCardNumberAsFallback"]
    for n, kind in enumerate(kinds):
        body = receipt(f"R-{n}", contact={"matchKey": "k", "matchKeyType": kind})
        assert post(http, sandbox, "receipts", body).status_code == 202


def test_engage_takes_only_the_documented_spelling_of_a_match_key_type(sandbox, http):
    body = receipt("R-P", contact={"matchKey": "k", "matchKeyType": "MobilePhone"})
    assert post(http, sandbox, "receipts", body).status_code == 400


def test_engage_refuses_a_return_with_a_positive_total_or_quantity(sandbox, http):
    line = {"type": "RETURN", "quantity": -1, "grossPaidPrice": 10.0}
    body = receipt("R-RET", totalGrossPrice=10.0)
    body["items"][0].update(line)
    assert post(http, sandbox, "receipts", body).status_code == 400
    body["totalGrossPrice"] = -10.0
    assert post(http, sandbox, "receipts", body).status_code == 202
    body = receipt("R-RET2", totalGrossPrice=-10.0)
    body["items"][0].update(line, quantity=1)
    assert post(http, sandbox, "receipts", body).status_code == 400


def test_engage_answers_500_without_a_content_type_even_to_a_get(sandbox, http):
    headers = {k: v for k, v in HEADERS.items() if k.lower() != "content-type"}
    answer = http.get(f"{sandbox.url}/api/v2/contacts/count", headers=headers)
    assert answer.status_code == 500
    assert "An error has occurred" in answer.text


def test_engage_needs_the_apikey(sandbox: SandboxCloud, http):
    url = f"{sandbox.url}/api/v2/receipts"
    wrong = {**HEADERS, "apikey": "nope"}
    assert http.post(url, json=receipt(), headers=wrong).status_code == 401
    no_key = {"User-Agent": "SandboxTest/1"}
    assert http.post(url, json=receipt(), headers=no_key).status_code == 401


def test_engage_needs_a_user_agent(sandbox: SandboxCloud, http):
    response = http.post(
        f"{sandbox.url}/api/v2/receipts",
        json=receipt(),
        headers={"apikey": "sandbox-engage-key", "User-Agent": ""},
    )
    assert response.status_code == 400


def test_engage_answers_500_to_a_body_without_json_content_type(sandbox: SandboxCloud, http):
    response = http.post(
        f"{sandbox.url}/api/v2/receipts",
        data=b'{"a": 1}',
        headers={**HEADERS, "Content-Type": "text/plain"},
    )
    assert response.status_code == 500
    assert "An error has occurred" in response.text


def test_engage_lookup_finds_one_none_or_several(sandbox: SandboxCloud, http):
    one = sandbox.engage.add_contact(email="one@example.com", mobilePhone="+46700000001")
    sandbox.engage.add_contact(email="two@example.com")
    sandbox.engage.add_contact(email="two@example.com")
    url = f"{sandbox.url}/api/v2/contacts/id"
    found = http.get(url, params={"mobilePhone": "+46700000001"}, headers=HEADERS)
    assert (found.status_code, found.json()) == (200, one)
    missing = http.get(url, params={"email": "none@example.com"}, headers=HEADERS)
    assert (missing.status_code, missing.json()["errorCode"]) == (404, "ContactNotFound")
    several = http.get(url, params={"email": "two@example.com"}, headers=HEADERS)
    assert (several.status_code, several.json()["errorCode"]) == (409, "MultipleMatches")
    bad = http.get(url, params={"email": "not-an-email"}, headers=HEADERS)
    assert (bad.status_code, bad.json()["errorCode"]) == (400, "InvalidEmailAddress")


def test_engage_create_returns_the_existing_contact_for_a_known_email(sandbox, http):
    first = post(http, sandbox, "contacts", {"email": "c@example.com", "firstName": "Test"})
    again = post(http, sandbox, "contacts", {"email": "c@example.com"})
    assert first.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert len(sandbox.engage.contacts) == 1


def test_engage_contact_get_update_delete(sandbox: SandboxCloud, http):
    cid = sandbox.engage.add_contact(email="d@example.com")
    url = f"{sandbox.url}/api/v2/contacts/{cid}"
    updated = http.post(url, json={"firstName": "Test"}, headers=HEADERS)
    assert updated.json()["firstName"] == "Test"
    assert http.get(url, headers=HEADERS).json()["email"] == "d@example.com"
    assert http.delete(url, headers=HEADERS).status_code == 204
    assert http.get(url, headers=HEADERS).status_code == 404


def test_engage_bulk_takes_4000_and_refuses_more(sandbox: SandboxCloud, http):
    rows = [{"email": f"b{n}@example.com"} for n in range(4001)]
    too_many = post(http, sandbox, "contacts/bulk?contactType=Member", rows)
    assert too_many.status_code == 400
    batch = post(http, sandbox, "contacts/bulk?contactType=Member", rows[:4000])
    assert batch.status_code == 202

    def status():
        url = f"{sandbox.url}/api/v2/contacts/bulk/status"
        return http.get(url, params={"batchId": batch.json()}, headers=HEADERS)

    assert status().json()["status"] == "InProgress"  # a job: applied a while later
    assert sandbox.engage.contacts == {}
    time.sleep(sandbox.engage.bulk_seconds)
    assert status().json()["status"] == "Completed"
    assert status().json()["succeeded"] == 4000
    assert len(sandbox.engage.contacts) == 4000


def test_engage_bulk_patch_updates(sandbox: SandboxCloud, http):
    cid = sandbox.engage.add_contact(email="p@example.com")
    url = f"{sandbox.url}/api/v2/contacts/bulk?contactType=Member"
    response = http.patch(url, json=[{"id": cid, "firstName": "Test"}], headers=HEADERS)
    assert response.status_code == 202
    time.sleep(sandbox.engage.bulk_seconds)
    sandbox.engage.settle_batches()
    assert sandbox.engage.contacts[cid]["firstName"] == "Test"


def engage_time(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def test_engage_changes_feed_lists_ids_by_type_and_window(clocked: SandboxCloud, clock, http):
    start = clock.now
    created = clocked.engage.add_contact(email="e@example.com")
    clock.now += 10
    clocked.engage.delete_contact(created)
    clock.now += 10
    url = f"{clocked.url}/api/v2/contacts/changes"

    def ids(change_type: str, since: float, until: float | None = None) -> Any:
        params = {"changeType": change_type, "fromDate": engage_time(since)}
        if until is not None:
            params["toDate"] = engage_time(until)
        response = http.get(url, params=params, headers=HEADERS)
        assert response.status_code == 200
        return response.json()

    assert ids("Created", start) == [created]
    assert ids("Deleted", start, start + 5) == []
    assert ids("Deleted", start + 5) == [created]
    assert ids("Updated", start) == []


def test_engage_changes_feed_refuses_a_window_over_the_cap(clocked: SandboxCloud, clock, http):
    start = clock.now
    for n in range(4):
        clocked.engage.add_contact(email=f"f{n}@example.com")
        clock.now += 1
    params = {"changeType": "Created", "fromDate": engage_time(start)}
    url = f"{clocked.url}/api/v2/contacts/changes"
    assert http.get(url, params=params, headers=HEADERS).status_code == 400
    params["toDate"] = engage_time(start + 1.5)
    narrowed = http.get(url, params=params, headers=HEADERS)
    assert (narrowed.status_code, len(narrowed.json())) == (200, 2)


def test_engage_rate_limit_per_key_answers_429(clock, http):
    cloud = SandboxCloud(now=clock, engage_rate_per_second=2).serve()
    try:
        url = f"{cloud.url}/api/v2/contacts/count"
        codes = [http.get(url, headers=HEADERS).status_code for _ in range(3)]
        clock.now += 1
        codes.append(http.get(url, headers=HEADERS).status_code)
    finally:
        cloud.stop()
    assert codes == [200, 200, 429, 200]
