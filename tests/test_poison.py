"""Poison (issue 14, R12): no single record, and no hostile client, stops a till.

Every record here goes through the real agent (waitress on loopback, real SQLite, delivery on)
against the sandbox cloud: refused at the door with a 4xx, or dead-lettered with a reason in
words, while the next good sale is delivered within 10 s, health never turns red and the
destination is never shown unreachable for it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

import pytest

from agent.sandbox import SandboxCloud
from tests.conftest import base_config, make_receipt, merged

GOOD_SALE_SECONDS = 10.0
# Short back-offs and few attempts, so a poison item reaches the dead letters within the test.
FAST = {
    "enabled": True,
    "backoff_initial_seconds": 0.05,
    "backoff_max_seconds": 0.5,
    "max_attempts": 3,
    "recovery_probe_seconds": 1.0,
}


@pytest.fixture
def cloud():
    sandbox = SandboxCloud(seed=14).serve()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def delivering(start_agent, tmp_path, cloud):
    """An agent delivering to the sandbox: Engage, Loaded and a webhook."""

    def start(**delivery):
        overrides = {
            "delivery": {**FAST, **delivery},
            "destinations": {
                "engage": {"base_url": cloud.url},
                "loaded": {"base_url": cloud.url + "/loaded"},
                "webhook": {
                    "kind": "webhook",
                    "base_url": cloud.url + "/webhook/till",
                    "takes": ["receipts", "contacts"],
                },
            },
        }
        return start_agent(merged(base_config(tmp_path), overrides))

    return start


def wait_for(condition: Callable[[], bool], seconds: float = GOOD_SALE_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def states(till) -> dict[str, str]:
    return {d["name"]: d["state"] for d in till.get("/v1/status").json()["destinations"]}


def test_an_undecodable_queue_row_is_dead_lettered_and_the_rest_flow(delivering, cloud, tmp_path):
    """Failure matrix 21 from the disk: a row whose bytes are not even UTF-8."""
    agent, till = delivering(enabled=False)
    assert till.post("/v1/receipts", make_receipt("SPOILED", contact=False)).status_code == 202
    till.close()
    agent.stop()
    with sqlite3.connect(tmp_path / "data" / "outbox.db") as conn:
        assert conn.execute("UPDATE ack_queue_loaded SET data = X'FFFE00'").rowcount == 1
    conn.close()
    agent, till = delivering()
    till.post("/v1/receipts", make_receipt("GOOD-1", contact=False))
    wait_for(lambda: "GOOD-1" in cloud.loaded.sales)
    wait_for(lambda: len(till.get("/v1/dead-letters").json()) == 1)
    (letter,) = till.get("/v1/dead-letters").json()
    assert (
        letter["reason"] == "cannot be sent as it is: the queued item cannot be read back: "
        "its bytes are not UTF-8"
    )
    assert agent.outbox.depth("loaded").claimed == 0
    assert states(till)["loaded"] == "online"
    spoiled = till.get("/v1/receipts/SPOILED").json()["destinations"]
    assert {d["destination"]: d["state"] for d in spoiled}["loaded"] == "dead_lettered"


def webhook_keys(cloud) -> set[str]:
    return {d.json["idempotencyKey"] for d in cloud.webhook.received if d.json.get("kind")}


# -- the reproductions of issue 14 -------------------------------------------------------


def test_receipts_naming_an_unknown_member_are_refused_and_the_next_sale_goes(delivering, cloud):
    _, till = delivering()
    for n in range(2):
        bad = make_receipt(f"BAD-{n}")
        bad["contact"] = {"localId": "loc_000000000000000000000000"}
        answer = till.post("/v1/receipts", bad)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"][0]["path"] == "$.contact.localId"
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: "GOOD-1" in cloud.engage.receipts)
    assert states(till)["engage"] == "online"


@pytest.mark.parametrize("total", ["Infinity", "NaN", "sNaN", "1e400", "1e999999999", "-Infinity"])
def test_receipts_with_a_total_that_is_no_amount_are_refused(delivering, cloud, total):
    _, till = delivering()
    for n in range(2):
        bad = make_receipt(f"BAD-{n}", contact=False)
        bad["totalGrossPrice"] = total
        answer = till.post("/v1/receipts", bad)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"][0]["path"] == "$.totalGrossPrice"
    till.post("/v1/receipts", make_receipt("GOOD-1", contact=False))
    wait_for(lambda: "GOOD-1" in cloud.loaded.sales)


@pytest.mark.parametrize(
    "receipt_id", ["S042-Łódź-000124", " LEADING-SPACE", "東京-0001", "a\u202eb"]
)
def test_a_receipt_id_that_cannot_be_a_header_is_delivered_everywhere(
    delivering, cloud, receipt_id
):
    _, till = delivering()
    assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: {receipt_id, "GOOD-1"} <= set(cloud.loaded.sales))
    wait_for(lambda: {receipt_id, "GOOD-1"} <= webhook_keys(cloud))
    wait_for(lambda: {receipt_id, "GOOD-1"} <= set(cloud.engage.receipts))
    assert till.get("/v1/health").status_code == 200
    assert set(states(till).values()) == {"online"}


@pytest.mark.parametrize("store_id", ["S042-Łódź", " S042", "S042\u202e"])
def test_a_store_id_that_cannot_be_a_header_still_registers_the_member(delivering, cloud, store_id):
    _, till = delivering()
    member = {"email": "poison.member@example.com", "storeExternalId": store_id}
    assert till.post("/v1/contacts", member).status_code == 202
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: "GOOD-1" in cloud.engage.receipts)
    wait_for(lambda: any(c.get("email") == member["email"] for c in cloud.engage.contacts.values()))
    assert till.get("/v1/health").status_code == 200


def test_a_contact_id_is_never_a_path_of_the_senders_choosing(delivering, cloud):
    _, till = delivering()
    hostile = {"contactId": "../../../loaded/pos/sales/eid:PWNED?x=1", "email": "x.y@example.com"}
    assert till.post("/v1/contacts", hostile).status_code == 202
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: "GOOD-1" in cloud.engage.receipts)
    wait_for(lambda: any(r.get("recordKey") for r in till.get("/v1/dead-letters").json()))
    for request in cloud.requests:
        if request.headers.get("Apikey"):
            assert request.path.startswith("/api/v2/"), request.path
        assert "PWNED" not in request.path or request.api == "engage", request.path
    assert "PWNED" not in json.dumps(list(cloud.loaded.sales))
