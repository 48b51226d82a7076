"""Intake over loopback: duplicates, amendments, routing, contacts, totals, quarantine."""

from __future__ import annotations

import pytest

from tests.conftest import make_receipt
from tests.ledger_probe import LedgerProbe


def depth(agent, destination: str) -> int:
    return agent.outbox.depth(destination).pending


def test_identical_receipt_again_is_a_duplicate_and_queues_nothing(agent_till):
    agent, till = agent_till
    assert till.post("/v1/receipts", make_receipt()).status_code == 202
    again = till.post("/v1/receipts", make_receipt())
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert depth(agent, "engage") == 1
    assert depth(agent, "loaded") == 1


def test_same_content_with_other_key_order_is_a_duplicate(agent_till):
    _, till = agent_till
    receipt = make_receipt()
    till.post("/v1/receipts", receipt)
    reordered = dict(reversed(list(receipt.items())))
    assert till.post("/v1/receipts", reordered).json()["status"] == "duplicate"


def test_changed_receipt_is_amended_and_replaces_the_queued_revision(agent_till):
    agent, till = agent_till
    till.post("/v1/receipts", make_receipt(lines=2))
    amended = till.post("/v1/receipts", make_receipt(lines=3))
    assert amended.status_code == 202
    assert amended.json()["status"] == "amended"
    assert amended.json()["revision"] == 2
    assert depth(agent, "loaded") == 1  # replaced in place: it had not left
    claimed = agent.outbox.claim("loaded", timeout_seconds=1)
    assert claimed is not None
    assert claimed.item.revision == 2
    assert len(claimed.item.body["items"]) == 3


def test_amendment_after_the_first_revision_left_is_queued_behind_it(agent_till):
    agent, till = agent_till
    till.post("/v1/receipts", make_receipt(lines=2))
    first = agent.outbox.claim("loaded", timeout_seconds=1)
    assert first is not None
    till.post("/v1/receipts", make_receipt(lines=3))
    agent.outbox.release(first)
    revisions = []
    while (claimed := agent.outbox.claim("loaded", timeout_seconds=0.1)) is not None:
        revisions.append(claimed.item.revision)
        agent.outbox.ack(claimed)
    assert revisions == [1, 2]


def test_an_earlier_revision_sent_again_is_a_duplicate_not_a_rollback(agent_till):
    _, till = agent_till
    till.post("/v1/receipts", make_receipt(lines=2))
    till.post("/v1/receipts", make_receipt(lines=3))
    again = till.post("/v1/receipts", make_receipt(lines=2))
    assert again.json()["status"] == "duplicate"
    assert till.get("/v1/receipts/R-0001").json()["revision"] == 2


def test_receipt_without_contact_goes_to_analytics_only(agent_till):
    agent, till = agent_till
    answer = till.post("/v1/receipts", make_receipt(contact=False)).json()
    assert answer["destinations"] == ["loaded"]
    assert depth(agent, "engage") == 0


def test_receipt_no_destination_takes_is_still_in_the_ledger(start_agent):
    _, till = start_agent({"destinations": {"loaded": {"enabled": False}}})
    answer = till.post("/v1/receipts", make_receipt(contact=False))
    assert answer.status_code == 202
    assert answer.json()["destinations"] == []
    state = till.get("/v1/receipts/R-0001").json()
    assert state["destinations"] == []
    assert state["revision"] == 1


def test_receipt_status_lists_each_destination_state(agent_till):
    agent, till = agent_till
    till.post("/v1/receipts", make_receipt())
    agent.outbox.claim("engage", timeout_seconds=1)
    state = till.get("/v1/receipts/R-0001").json()
    by_name = {d["destination"]: d["state"] for d in state["destinations"]}
    assert by_name == {"engage": "sending", "loaded": "queued"}


def test_contact_is_queued_for_destinations_that_take_contacts(agent_till):
    agent, till = agent_till
    contact = {"firstName": "Testfirst", "email": "member.one@example.com", "acceptsEmail": True}
    answer = till.post("/v1/contacts", contact)
    assert answer.status_code == 202
    body = answer.json()
    assert body["status"] == "queued"
    assert body["localId"].startswith("loc_")
    assert body["destinations"] == ["engage"]
    assert depth(agent, "engage") == 1
    again = till.post("/v1/contacts", contact)
    assert again.status_code == 200
    assert again.json()["localId"] == body["localId"]


def test_contact_without_any_key_is_422(agent_till):
    _, till = agent_till
    answer = till.post("/v1/contacts", {"firstName": "Testfirst"})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_contact"


def test_totals_that_do_not_add_up_are_accepted_with_a_warning(agent_till):
    _, till = agent_till
    receipt = make_receipt(lines=2)
    receipt["totalGrossPrice"] = "25.00"
    answer = till.post("/v1/receipts", receipt)
    assert answer.status_code == 202
    assert len(answer.json()["warnings"]) == 2  # lines and payments both disagree
    assert till.get("/v1/status").json()["counters"]["totals_warnings"] == 1


def test_returns_count_negative_in_the_totals(agent_till):
    _, till = agent_till
    receipt = make_receipt(lines=2)
    receipt["items"][1].update(type="RETURN", quantity=-1)
    receipt["totalGrossPrice"] = "0.00"
    receipt["paymentMethods"] = [{"type": "card", "value": "0.00"}]
    assert till.post("/v1/receipts", receipt).json()["warnings"] == []


def test_totals_within_rounding_tolerance_give_no_warning(agent_till):
    _, till = agent_till
    receipt = make_receipt(lines=2)
    receipt["totalGrossPrice"] = "20.04"
    receipt["paymentMethods"] = [{"type": "card", "value": "20.04"}]
    assert till.post("/v1/receipts", receipt).json()["warnings"] == []


def test_strict_totals_quarantine_the_receipt(start_agent):
    agent, till = start_agent({"intake": {"strict_totals": True}})
    receipt = make_receipt(lines=2)
    receipt["totalGrossPrice"] = "25.00"
    answer = till.post("/v1/receipts", receipt)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "totals_mismatch"
    error_id = answer.json()["error"]["errorId"]
    assert quarantined(agent, error_id) == "totals_mismatch"
    assert depth(agent, "loaded") == 0


def test_invalid_body_is_kept_sealed_in_quarantine(agent_till):
    agent, till = agent_till
    receipt = make_receipt()
    receipt["items"][0]["quantity"] = "one"
    answer = till.post("/v1/receipts", receipt)
    error_id = answer.json()["error"]["errorId"]
    assert quarantined(agent, error_id) == "invalid_body"
    with LedgerProbe(agent) as ledger:
        (sealed,) = [q.sealed_body for q in ledger.quarantine() if q.error_id == error_id]
    assert sealed is not None
    assert "+46700000001" not in sealed
    assert sealed.startswith("s1.")


def quarantined(agent, error_id: str) -> str | None:
    with LedgerProbe(agent) as ledger:
        codes = [q.code for q in ledger.quarantine() if q.error_id == error_id]
    return codes[0] if codes else None


def test_status_counts_every_outcome(agent_till):
    _, till = agent_till
    till.post("/v1/receipts", make_receipt("R-1"))
    till.post("/v1/receipts", make_receipt("R-1"))
    till.post("/v1/receipts", make_receipt("R-1", lines=3))
    till.post("/v1/receipts", {"bad": True})
    status = till.get("/v1/status").json()
    assert status["counters"] | {} == {
        "accepted": 1,
        "duplicates": 1,
        "amended": 1,
        "quarantined": 1,
        "totals_warnings": 0,
        "contacts": 0,
        "dead_letters": 0,
    }
    loaded = next(d for d in status["destinations"] if d["name"] == "loaded")
    assert loaded["depth"] == 1
    assert loaded["oldestAgeSeconds"] >= 0


# -- issue 14: refused at the door what no destination can take --------------------------

REFUSED = [
    ("matchKey", {"matchKey": "hello", "matchKeyType": "MobilePhone"}, "invalid_match_key"),
    ("matchKey", {"matchKey": "not an address", "matchKeyType": "Email"}, "invalid_match_key"),
    ("matchKey", {"matchKey": "   ", "matchKeyType": "MemberNumber"}, "invalid_match_key"),
    ("localId", {"localId": "loc_000000000000000000000000"}, "unknown_local_id"),
]


@pytest.mark.parametrize(("field", "contact", "code"), REFUSED, ids=[r[2] + r[0] for r in REFUSED])
def test_a_buyer_no_cloud_can_find_is_refused_with_its_field_and_quarantined(
    agent_till, field, contact, code
):
    agent, till = agent_till
    receipt = make_receipt()
    receipt["contact"] = contact
    answer = till.post("/v1/receipts", receipt)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == code
    assert error["details"] == [{"path": f"$.contact.{field}", "message": error["message"]}]
    assert quarantined(agent, error["errorId"]) == code
    assert depth(agent, "loaded") == 0


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("totalGrossPrice", "Infinity"),
        ("totalGrossPrice", "-Infinity"),
        ("totalGrossPrice", "NaN"),
        ("totalGrossPrice", "sNaN"),
        ("totalGrossPrice", 1e300),
        ("totalGrossPrice", "1e999999999"),
        ("totalGrossPrice", "1000000000000000"),
        ("totalGrossPrice", "0.000000001"),
        ("items[0].grossPaidPrice", "Infinity"),
        ("items[0].taxAmount", "NaN"),
        ("items[0].taxPercent", "1e400"),
        ("paymentMethods[0].value", "-1e20"),
        ("items[0].discounts[0].value", "Infinity"),
    ],
)
def test_an_amount_no_destination_can_take_is_refused_with_its_path(agent_till, where, value):
    agent, till = agent_till
    receipt = make_receipt()
    receipt["items"][0]["discounts"] = [{"value": "1.00"}]
    target, _, name = where.rpartition(".")
    holder = receipt
    for part in target.replace("]", "").split(".") if target else []:
        key, _, index = part.partition("[")
        holder = holder[key][int(index)] if index else holder[key]
    holder[name or where] = value
    answer = till.post("/v1/receipts", receipt)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_amount"
    assert error["details"][0]["path"] == f"$.{where}"
    assert depth(agent, "loaded") == 0


def test_the_largest_exact_amount_is_taken(agent_till):
    _, till = agent_till
    receipt = make_receipt(contact=False)
    receipt["totalGrossPrice"] = "123456789012345.6789"  # 15 integer digits, 4 decimals
    assert till.post("/v1/receipts", receipt).status_code == 202


def test_a_member_registered_here_can_be_named_by_its_local_id(agent_till):
    _, till = agent_till
    local_id = till.post("/v1/contacts", {"email": "zz.local@example.com"}).json()["localId"]
    receipt = make_receipt()
    receipt["contact"] = {"localId": local_id}
    assert till.post("/v1/receipts", receipt).status_code == 202


@pytest.mark.parametrize(
    ("contact", "path"),
    [
        ({"email": "not an address"}, "$.email"),
        ({"email": "zz.x@example.com", "mobilePhone": "hello"}, "$.mobilePhone"),
        ({"mobilePhone": "+4"}, "$.mobilePhone"),
    ],
)
def test_a_member_whose_email_or_phone_no_cloud_can_take_is_refused(agent_till, contact, path):
    agent, till = agent_till
    answer = till.post("/v1/contacts", contact)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert (error["code"], error["details"][0]["path"]) == ("invalid_contact", path)
    assert quarantined(agent, error["errorId"]) == "invalid_contact"
