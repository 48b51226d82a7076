"""Reconciliation from the ledger: taken, delivered, pending, dead-lettered, and what differs.

Delivery is driven step by step with a scripted sender here; end to end over HTTP against the
sandbox cloud (outage included): tests/test_reconcile_e2e.py.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from agent.core.errors import RejectedError
from tests.conftest import make_receipt
from tests.fakes.senders import Clock, ScriptedSender, raising
from tests.test_dispatch import dispatcher_for, drain

DAY = "2026-11-23"  # make_receipt's createdDate


@pytest.fixture
def rig(start_agent):
    """Both destinations, each with its own scripted cloud; delivery stepped by the test."""
    agent, till = start_agent()
    clock = Clock()
    clouds = {"loaded": ScriptedSender(), "engage": ScriptedSender()}
    workers = {
        "loaded": dispatcher_for(agent, clouds["loaded"], "loaded", monotonic=clock),
        "engage": dispatcher_for(
            agent, clouds["engage"], "engage", monotonic=clock, amends="difference"
        ),
    }
    return agent, till, clouds, workers, clock


def deliver(rig, *names):
    _, _, _, workers, clock = rig
    for name in names or tuple(workers):
        drain(workers[name], clock)


def reconcile(till, day=DAY, **query):
    params = {"from": day, **query}
    response = till.get("/v1/reconciliation", params=params)
    assert response.status_code == 200, response.text
    return {d["destination"]: d for d in response.json()["days"][0]["destinations"]}


def sale(receipt_id, *lines, tenders=None, contact=True):
    """A receipt of these line amounts (negative: returned), paid by these tenders."""
    body = make_receipt(receipt_id, lines=len(lines), contact=contact)
    for item, amount in zip(body["items"], lines, strict=True):
        value = Decimal(amount)
        item["type"] = "RETURN" if value < 0 else "PURCHASE"
        item["quantity"] = -1 if value < 0 else 1
        item["grossPaidPrice"] = str(abs(value))
        item["taxAmount"] = str((abs(value) * Decimal("0.2")).quantize(Decimal("0.01")))
    total = sum((Decimal(a) for a in lines), Decimal(0))
    body["totalGrossPrice"] = str(total)
    body["paymentMethods"] = [
        {"type": kind, "value": value} for kind, value in (tenders or {"CARD": str(total)}).items()
    ]
    return body


def test_a_delivered_day_matches_to_the_cent(rig):
    _, till, _, _, _ = rig
    till.post("/v1/receipts", sale("R-1", "10.10", "5.05"))
    till.post("/v1/receipts", sale("R-2", "0.10", "0.20", tenders={"CARD": "0.20", "CASH": "0.10"}))
    till.post("/v1/receipts", sale("R-3", "-7.00", contact=False))
    deliver(rig)
    answer = reconcile(till)
    loaded = answer["loaded"]
    assert loaded["status"] == "match"
    assert (
        loaded["taken"]
        == loaded["delivered"]
        == {
            "count": 3,
            "gross": "8.45",
            "tax": "1.69",  # 2.02 + 1.01 + 0.02 + 0.04 - 1.40
            "tenders": {"CARD": "8.35", "CASH": "0.10"},
            "returns": {"count": 1, "gross": "-7.00"},
        }
    )
    assert answer["engage"]["taken"]["count"] == 2  # Engage takes receipts with a buyer only
    assert answer["engage"]["status"] == "match"
    assert loaded["differences"] == []


def test_receipts_not_yet_sent_are_pending_with_their_ids(rig):
    _, till, _, _, _ = rig
    till.post("/v1/receipts", sale("R-1", "10.00"))
    deliver(rig)
    till.post("/v1/receipts", sale("R-2", "4.00"))
    loaded = reconcile(till)["loaded"]
    assert loaded["status"] == "pending"
    assert loaded["differences"] == ["R-2"]
    assert loaded["pending"] == {"count": 1, "gross": "4.00"}
    assert loaded["delivered"]["gross"] == "10.00"
    assert loaded["details"][0]["state"] == "pending"


def test_a_dead_letter_is_a_mismatch_naming_the_receipt_and_the_retry_that_fixes_it(rig):
    _, till, clouds, _, _ = rig
    clouds["loaded"].rules["R-BAD"] = raising(RejectedError("no", connector="loaded", status=400))
    till.post("/v1/receipts", sale("R-OK", "3.00"))
    till.post("/v1/receipts", sale("R-BAD", "9.99"))
    deliver(rig)
    loaded = reconcile(till)["loaded"]
    assert loaded["status"] == "mismatch"
    assert loaded["differences"] == ["R-BAD"]
    assert loaded["deadLettered"] == {"count": 1, "gross": "9.99"}
    (detail,) = loaded["details"]
    (letter_id,) = detail["deadLetterIds"]
    assert f"till-agent dead-letters retry {letter_id}" in detail["fix"]
    assert reconcile(till)["engage"]["status"] == "match"  # the other cloud took it
    del clouds["loaded"].rules["R-BAD"]
    assert till.post(f"/v1/dead-letters/{letter_id}/retry", {}).status_code == 202
    deliver(rig)
    assert reconcile(till)["loaded"]["status"] == "match"


def test_an_amended_order_ends_equal_in_an_append_only_cloud_through_its_difference(rig):
    _, till, clouds, _, _ = rig
    till.post("/v1/receipts", sale("R-1", "10.00", "5.00"))
    deliver(rig)
    amended = sale("R-1", "10.00", "5.00", "2.50")
    assert till.post("/v1/receipts", amended).json()["status"] == "amended"
    engage = reconcile(till)["engage"]
    assert engage["status"] == "pending"
    assert engage["delivered"]["gross"] == "15.00"
    assert engage["pending"] == {"count": 1, "gross": "2.50"}
    deliver(rig)
    assert clouds["engage"].sent == ["R-1", "R-1~r2"]  # the difference went as its own receipt
    answer = reconcile(till)
    for name in ("engage", "loaded"):
        assert answer[name]["status"] == "match", name
        assert answer[name]["delivered"] == answer[name]["taken"]
        assert answer[name]["taken"]["count"] == 1
        assert answer[name]["taken"]["gross"] == "17.50"


def test_a_stale_revision_sent_last_to_a_replacing_cloud_is_found_and_replay_mends_it(rig):
    _, till, clouds, _, _ = rig
    rejected = raising(RejectedError("no", connector="loaded", status=400))
    clouds["loaded"].default = rejected
    till.post("/v1/receipts", sale("R-1", "10.00", contact=False))
    deliver(rig, "loaded")
    clouds["loaded"].default = None
    till.post("/v1/receipts", sale("R-1", "12.00", contact=False))  # revision 2 goes out
    deliver(rig, "loaded")
    (letter,) = till.get("/v1/dead-letters").json()
    till.post(f"/v1/dead-letters/{letter['id']}/retry", {})  # revision 1 goes out after it
    deliver(rig, "loaded")
    loaded = reconcile(till)["loaded"]
    assert loaded["status"] == "mismatch"
    assert loaded["details"][0]["state"] == "differs"
    assert loaded["details"][0]["delivered"] == "10.00"
    assert loaded["details"][0]["fix"] == (
        f"till-agent replay --from {DAY} --to {DAY} --destination loaded"
    )
    assert till.post("/v1/replay", {"from": DAY, "to": DAY, "destination": "loaded"}).ok
    deliver(rig, "loaded")
    assert reconcile(till)["loaded"]["status"] == "match"


def test_a_change_of_tender_reaches_an_append_only_cloud(rig):
    _, till, _, _, _ = rig
    till.post("/v1/receipts", sale("R-1", "20.00"))
    deliver(rig)
    till.post("/v1/receipts", sale("R-1", "20.00", tenders={"CASH": "20.00"}))
    deliver(rig)
    engage = reconcile(till)["engage"]
    assert engage["delivered"]["tenders"] == {"CASH": "20.00"}
    assert engage["status"] == "match"


def test_days_and_destinations_are_chosen_and_bad_queries_refused(rig):
    _, till, _, _, _ = rig
    till.post("/v1/receipts", sale("R-1", "1.00"))
    response = till.get(
        "/v1/reconciliation",
        params={"from": "2026-11-22", "to": "2026-11-24", "destination": "loaded"},
    )
    days = response.json()["days"]
    assert [d["date"] for d in days] == ["2026-11-22", "2026-11-23", "2026-11-24"]
    assert [[e["destination"] for e in d["destinations"]] for d in days] == [["loaded"]] * 3
    assert days[0]["destinations"][0]["status"] == "match"  # nothing taken, nothing owed
    assert days[0]["destinations"][0]["taken"]["count"] == 0
    for params in (
        {},
        {"from": "yesterday"},
        {"from": "2026-11-23", "to": "2026-11-01"},
        {"from": "2026-11-23", "destination": "nowhere"},
        {"from": "2026-11-23", "colour": "blue"},
        {"from": "2020-01-01", "to": "2026-01-01"},
    ):
        answer = till.get("/v1/reconciliation", params=params)
        assert answer.status_code == 400, params
        assert answer.json()["error"]["errorId"]


def test_todays_counters_agree_with_the_full_reconciliation(rig):
    """The status page's O(1) counters against the reconciliation's scan of the same day."""
    _, till, clouds, _, _ = rig
    today = dt.date.today().isoformat()

    def dated(body):
        body["createdDate"] = f"{today}T11:00:00+01:00"
        return body

    clouds["loaded"].rules["R-3"] = raising(RejectedError("no", connector="loaded", status=400))
    till.post("/v1/receipts", dated(sale("R-1", "10.00", "2.00")))
    till.post("/v1/receipts", dated(sale("R-2", "-3.00")))
    till.post("/v1/receipts", dated(sale("R-3", "7.77", contact=False)))
    deliver(rig)
    till.post("/v1/receipts", dated(sale("R-1", "10.00", "2.00", "1.00")))  # amended
    till.post("/v1/receipts", dated(sale("R-4", "4.00")))
    deliver(rig, "engage")
    full = reconcile(till, today)
    status = {d["name"]: d["today"] for d in till.get("/v1/status").json()["destinations"]}
    for name in ("engage", "loaded"):
        for part in ("taken", "delivered"):
            assert status[name][part]["count"] == full[name][part]["count"], (name, part)
            assert Decimal(status[name][part]["gross"]) == Decimal(full[name][part]["gross"])
    assert status["loaded"]["pending"] == {"count": 2, "gross": "12.77"}
    assert status["engage"]["pending"] == {"count": 0, "gross": "0.00"}


def test_reconcile_and_the_qa_report_from_the_command_line_on_a_stopped_agent(rig, tmp_path):
    import json

    from tests.conftest import base_config, write_toml
    from tests.test_cli import till_agent

    agent, till, clouds, _, _ = rig
    clouds["loaded"].rules["R-2"] = raising(RejectedError("no", connector="loaded", status=400))
    till.post("/v1/receipts", sale("R-1", "10.00", tenders={"CARD": "6.00", "CASH": "4.00"}))
    till.post("/v1/receipts", sale("R-2", "2.00", contact=False))
    deliver(rig)
    till.close()
    agent.stop()
    config = str(write_toml(tmp_path / "config.toml", base_config(tmp_path)))
    text = till_agent("reconcile", "--date", DAY, "--config", config)
    assert text.returncode == 0, text.stderr
    assert "loaded       MISMATCH" in text.stdout
    assert "R-2  deadLettered  taken 2.00  delivered -" in text.stdout
    assert "till-agent dead-letters retry 1" in text.stdout
    as_json = till_agent(
        "reconcile", "--date", DAY, "--json", "--destination", "engage", "--config", config
    )
    (day,) = json.loads(as_json.stdout)["days"]
    assert [d["status"] for d in day["destinations"]] == ["match"]
    wrong = till_agent("reconcile", "--date", DAY, "--destination", "nowhere", "--config", config)
    assert wrong.returncode != 0
    assert "no destination 'nowhere' takes receipts here" in wrong.stderr
    target = tmp_path / "report.json"
    made = till_agent(
        "qa-report", "--from", DAY, "--format", "json", "--output", str(target), "--config", config
    )
    assert made.returncode == 0, made.stderr
    assert "2 receipts, some numbers differ" in made.stdout
    report = json.loads(target.read_text("utf-8"))
    rows = {r["uniqueReceiptId"]: r for r in report["receipts"]}
    assert rows["R-1"]["kinds"] == ["purchase", "split"]  # two tenders
    assert rows["R-1"]["destinations"]["engage"] == {
        "state": "delivered",
        "verification": "accepted",
        "delivered": "10.00",
        "cloud": None,  # not read back: no --verify
    }
    assert rows["R-2"]["destinations"] == {
        "loaded": {
            "state": "deadLettered",
            "verification": "not delivered",
            "delivered": None,
            "cloud": None,
        }
    }
    assert report["allMatch"] is False
    assert "+46700000001" not in target.read_text("utf-8")


def vm_steps(agent, read) -> int:
    """SQLite virtual-machine instructions one read costs (the cost that grows with a scan)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with agent.outbox.read() as conn:
        conn.set_progress_handler(count, 1)
        try:
            read(conn)
        finally:
            conn.set_progress_handler(None, 1)
    return steps


def test_the_status_pages_takings_cost_the_same_however_busy_the_day(rig):
    """Today's totals are counters and the oldest waiting receipt comes off a partial index:
    the reads cost the same after 2 receipts as after 600, half of them delivered."""
    import msgspec

    from agent.core import models
    from agent.ledger import takings

    agent, _, _, workers, _ = rig
    today = dt.date.today().isoformat()

    def load(first, count):
        for n in range(first, first + count):
            body = sale(f"B-{n:04d}", "1.00")
            body["createdDate"] = f"{today}T09:00:00+01:00"
            agent.intake.put_receipt(msgspec.convert(body, models.Receipt, strict=False))

    def read(conn):
        for name in ("loaded", "engage"):
            takings.day_totals(conn, today, name)
            takings.oldest_waiting(conn, name)

    load(0, 2)
    small = vm_steps(agent, read)
    load(2, 300)
    for _ in range(300):
        workers["loaded"].step()
    load(302, 298)
    large = vm_steps(agent, read)
    assert large <= small + 50, (small, large)
    with agent.outbox.read() as conn:
        oldest = takings.oldest_waiting(conn, "loaded")
        assert oldest is not None
        assert oldest[0] == "B-0300"
        assert takings.day_totals(conn, today, "loaded").taken_count == 600


def test_the_takings_go_with_the_ledger_after_its_retention(rig):
    import time

    from agent.privacy import Privacy

    agent, till, _, _, _ = rig
    today = dt.date.today().isoformat()
    body = sale("R-1", "5.00")
    body["createdDate"] = f"{today}T08:00:00+01:00"
    till.post("/v1/receipts", body)
    deliver(rig)
    assert reconcile(till, today)["loaded"]["taken"]["count"] == 1
    later = Privacy(
        agent.outbox, agent.privacy.keyring, agent.settings, now=lambda: time.time() + 100 * 86400
    )
    assert later.purge().ledger_deleted == 1
    assert reconcile(till, today)["loaded"]["taken"]["count"] == 0
    today_status = till.get("/v1/status").json()["destinations"][0]["today"]
    assert today_status["taken"] == {"count": 0, "gross": "0"}
