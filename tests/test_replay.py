"""Replay: delivered receipts of a date range go out again behind live sales, same keys."""

from __future__ import annotations

from typing import Any

from tests.conftest import make_receipt
from tests.fakes.senders import ScriptedSender
from tests.ledger_probe import LedgerProbe
from tests.test_cli import till_agent
from tests.test_dispatch import dispatcher_for, post


def dated(receipt_id: str, day: str) -> dict[str, object]:
    body = make_receipt(receipt_id)
    body["createdDate"] = f"{day}T12:00:00+01:00"
    return body


def test_a_date_range_is_sent_again_at_low_priority(start_agent):
    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    for receipt_id, day in (("A", "2026-11-01"), ("B", "2026-11-02"), ("C", "2026-11-05")):
        till.post("/v1/receipts", dated(receipt_id, day))
    sender = ScriptedSender()
    dispatcher = dispatcher_for(agent, sender)
    while dispatcher.step():
        pass
    answer = till.post("/v1/replay", {"from": "2026-11-01", "to": "2026-11-02"})
    assert answer.status_code == 202
    assert answer.json() == {"queued": 2}
    post(till, "LIVE")
    while dispatcher.step():
        pass
    assert sender.sent == ["A", "B", "C", "LIVE", "A", "B"]  # live first, same keys again


def test_replay_refuses_a_backwards_range(agent_till):
    _, till = agent_till
    assert till.post("/v1/replay", {"from": "2026-11-05", "to": "2026-11-01"}).status_code == 400


def test_replay_from_the_command_line_on_a_stopped_agent(start_agent, tmp_path):
    from tests.conftest import base_config, write_toml

    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    till.post("/v1/receipts", dated("A", "2026-10-10"))
    dispatcher = dispatcher_for(agent, ScriptedSender())
    dispatcher.step()
    till.close()
    agent.stop()
    config = write_toml(tmp_path / "config.toml", base_config(tmp_path))
    result = till_agent(
        "replay", "--from", "2026-10-01", "--to", "2026-10-31", "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    assert "queued 1 receipts again" in result.stdout


def test_the_journal_keeps_the_buyer_sealed_and_forget_strips_it(start_agent):
    from tests.test_privacy_scan import PLANTED, scan

    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    body = dated("P", "2026-11-01")
    body["contact"] = {"matchKey": PLANTED["email"], "matchKeyType": "email"}
    till.post("/v1/receipts", body)
    dispatcher_for(agent, ScriptedSender()).step()
    assert scan(agent.settings.agent.data_dir) == []
    agent.privacy.forget(email=PLANTED["email"])
    with LedgerProbe(agent) as ledger:
        (item,) = ledger.journal_items()
    assert item.personal is None


def test_a_dry_run_says_what_each_cloud_will_do_and_queues_nothing(start_agent):
    agent, till = start_agent()
    loaded, engage = ScriptedSender(), ScriptedSender()
    workers = [
        dispatcher_for(agent, loaded, "loaded"),
        dispatcher_for(agent, engage, "engage", amends="difference"),
    ]
    till.post("/v1/receipts", dated("A", "2026-11-01"))
    amended: dict[str, Any] = dated("A", "2026-11-01")
    amended["items"][0]["quantity"] = 2
    amended["items"][0]["grossPaidPrice"] = "20.00"
    amended["totalGrossPrice"] = "30.00"
    amended["paymentMethods"][0]["value"] = "30.00"
    for worker in workers:
        while worker.step():
            pass
    till.post("/v1/receipts", amended)
    for worker in workers:
        while worker.step():
            pass
    answer = till.post("/v1/replay", {"from": "2026-11-01", "to": "2026-11-01", "dryRun": True})
    assert answer.status_code == 200
    plan = answer.json()
    steps = [(s["destination"], s["revision"], s["sendsAs"], s["effect"]) for s in plan["steps"]]
    assert sorted(steps) == [
        ("engage", 1, "A", "duplicate"),
        ("engage", 2, "A~r2", "duplicate"),
        ("loaded", 1, "A", "replaces"),
        ("loaded", 2, "A", "replaces"),
    ]
    assert (plan["wouldQueue"], plan["replaces"], plan["duplicates"]) == (4, 2, 2)
    for name in ("loaded", "engage"):
        assert agent.outbox.depth(name).pending == 0  # a dry run queues nothing


def test_a_dry_run_from_the_command_line(start_agent, tmp_path):
    from tests.conftest import base_config, write_toml

    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    till.post("/v1/receipts", dated("A", "2026-10-10"))
    dispatcher_for(agent, ScriptedSender()).step()
    till.close()
    agent.stop()
    config = write_toml(tmp_path / "config.toml", base_config(tmp_path))
    result = till_agent(
        "replay", "--from", "2026-10-01", "--to", "2026-10-31", "--dry-run", "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    assert "replaces the cloud's copy" in result.stdout
    assert "would queue 1: 1 replace what the cloud holds" in result.stdout


def test_replaying_a_range_already_queued_adds_nothing(start_agent, tmp_path):
    agent, till = start_agent({"destinations": {"engage": {"enabled": False}}})
    for receipt_id, day in (("A", "2026-11-01"), ("B", "2026-11-02")):
        till.post("/v1/receipts", dated(receipt_id, day))
    sender = ScriptedSender()
    dispatcher = dispatcher_for(agent, sender)
    while dispatcher.step():
        pass
    span = {"from": "2026-11-01", "to": "2026-11-02"}
    assert till.post("/v1/replay", span).json() == {"queued": 2}
    assert till.post("/v1/replay", span).json() == {"queued": 0}  # the same range again
    assert till.post("/v1/replay", {**span, "to": "2026-11-01"}).json() == {"queued": 0}
    assert till.post("/v1/replay", {**span, "dryRun": True}).json()["steps"] == []
    assert agent.outbox.depth("loaded").low_priority == 2
    while dispatcher.step():
        pass
    assert sender.sent == ["A", "B", "A", "B"]  # each once more, not twice
    assert till.post("/v1/replay", span).json() == {"queued": 2}  # delivered again: replayable
