"""Retention, erasure and crypto-shredding: after the purge, planted personal data is gone."""

from __future__ import annotations

import json
import shutil

import pytest

from agent.core import crypto
from agent.core.errors import KeyStoreError
from agent.privacy import DAY, Privacy
from tests.conftest import make_receipt
from tests.ledger_probe import LedgerProbe
from tests.test_privacy_scan import PLANTED, plant_everything, scan


class FakeClocks:
    """Wall and monotonic time that move together, as on a till that really waited."""

    def __init__(self, start: float) -> None:
        self.wall = start
        self.mono = 1000.0

    def advance_days(self, days: float) -> None:
        self.wall += days * DAY
        self.mono += days * DAY


@pytest.fixture
def planted(start_agent):
    """An agent with personal data in every store: delivered, undelivered and quarantined."""
    agent, till = start_agent()
    plant_everything(till)
    keep = make_receipt("R-KEEP")
    keep["contact"] = {"matchKey": PLANTED["phone"], "matchKeyType": "mobilePhone"}
    assert till.post("/v1/receipts", keep).status_code == 202
    deliver_all_but(agent, keep_key="R-KEEP")
    return agent, till


def deliver_all_but(agent, keep_key: str) -> None:
    """What delivery does on success: claim, record delivered, ack (one item stays queued)."""
    held = []
    for destination in agent.outbox.destinations:
        while (claimed := agent.outbox.claim(destination, timeout_seconds=0.05)) is not None:
            item = claimed.item
            if item.key == keep_key:
                held.append(claimed)
                continue
            agent.ledger.record_delivery(destination, item.key, item.revision, "delivered")
            agent.outbox.ack(claimed)
    for claimed in held:
        agent.outbox.release(claimed)


def privacy_with_clocks(agent, clocks: FakeClocks) -> Privacy:
    return Privacy(
        agent.outbox,
        agent.privacy.keyring,
        agent.settings,
        now=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )


def queued_personal(agent, key: str) -> list[str]:
    """The sealed personal part of every queued item of one record."""
    found = []
    for queue in agent.outbox.queues:
        for _, item in agent.outbox.run(lambda b, d=queue: b.pending_items(d)):
            if item.key == key:
                found.append(item.personal)
    return found


def assert_deliverable(agent, keyring) -> None:
    """R-KEEP is queued for both clouds and its buyer still opens with the current keys."""
    sealed = queued_personal(agent, "R-KEEP")
    assert len(sealed) == 2
    for value in sealed:
        personal = json.loads(keyring.open(value, crypto.record_aad("receipt", "R-KEEP")))
        assert personal["contact"]["matchKey"] == PLANTED["phone"]


def sealed_values(data_dir) -> list[tuple[str, str]]:
    """(sealed value, record aad) of every queue item and quarantine row in an outbox copy."""
    values = []
    with LedgerProbe(data_dir) as ledger:
        for queue in ledger.queues():
            for item in ledger.queue_items(queue):
                if item.personal:
                    values.append((item.personal, crypto.record_aad(item.kind, item.key)))
        for kept in ledger.quarantine():
            if kept.sealed_body:
                values.append((kept.sealed_body, crypto.record_aad("quarantine", kept.error_id)))
    return values


def test_before_retention_everything_is_still_there_and_deliverable(planted):
    agent, _ = planted
    clocks = FakeClocks(start=__import__("time").time())
    report = privacy_with_clocks(agent, clocks).purge()
    assert report.quarantine_redacted == 0
    assert report.ledger_deleted == 0
    assert report.delivered_deleted > 0  # delivered items never wait for a retention
    keyring = agent.privacy.keyring
    assert_deliverable(agent, keyring)
    quarantined = [
        v for v, aad in sealed_values(agent.settings.agent.data_dir) if "quarantine" in aad
    ]
    assert len(quarantined) == 1


def test_after_retention_the_purge_leaves_no_trace_and_old_copies_cannot_be_read(planted, tmp_path):
    agent, _ = planted
    data_dir = agent.settings.agent.data_dir
    clocks = FakeClocks(start=__import__("time").time())
    privacy = privacy_with_clocks(agent, clocks)
    privacy.purge()
    backup = tmp_path / "backup"
    agent.outbox.checkpoint()
    shutil.copytree(data_dir, backup)  # a backup or disk image taken before retention ended
    old_values = sealed_values(backup)
    assert old_values, "the backup holds sealed personal data"

    clocks.advance_days(100)  # past quarantine, dead-letter, contact TTL and ledger retention
    report = privacy.purge()

    assert report.quarantine_redacted == 1
    assert report.ledger_deleted >= 2
    assert report.key_rotated
    assert len(report.keys_destroyed) == 1
    assert report.resealed == 2  # R-KEEP for both clouds, still undelivered: the new key seals it
    assert scan(data_dir) == []
    keyring = agent.privacy.keyring
    for value, aad in old_values:
        with pytest.raises(KeyStoreError):
            keyring.open(value, aad)
    reloaded = crypto.load_or_create(agent.settings.privacy.key_file, may_create=False)
    assert [k.key_id for k in reloaded.data_keys()] == [keyring.active_key_id]
    assert_deliverable(agent, keyring)


def test_redacted_quarantine_keeps_the_record_of_what_happened(planted):
    agent, till = planted
    clocks = FakeClocks(start=__import__("time").time())
    clocks.advance_days(15)
    privacy_with_clocks(agent, clocks).purge()
    with LedgerProbe(agent) as ledger:
        (kept,) = ledger.quarantine()
    assert kept.code == "invalid_body"
    assert kept.reason
    assert kept.sealed_body is None
    assert kept.redacted_at is not None
    assert till.get("/v1/status").json()["counters"]["quarantined"] == 1


def test_a_clock_jump_ahead_does_not_mass_purge(planted):
    agent, _ = planted
    clocks = FakeClocks(start=__import__("time").time())
    privacy = privacy_with_clocks(agent, clocks)
    privacy.purge()
    clocks.wall += 400 * DAY  # the RTC jumped; the monotonic clock knows better
    report = privacy.purge()
    assert report.clock_jump_seconds > 399 * DAY
    assert report.quarantine_redacted == 0
    assert not report.keys_destroyed


def test_forget_removes_a_person_from_every_store(planted):
    agent, _ = planted
    privacy = agent.privacy
    report = privacy.forget(mobile_phone="070-000 91 73")  # a local format of PLANTED["phone"]
    assert report.queued_items_stripped == 2  # R-KEEP leaves for both clouds without its buyer
    assert queued_personal(agent, "R-KEEP") == [None, None]
    report = privacy.forget(email=PLANTED["quarantined"].upper())
    assert report.quarantine_deleted == 1
    assert sealed_values(agent.settings.agent.data_dir) == []


def test_forget_withdraws_a_queued_contact_registration(start_agent):
    agent, till = start_agent()
    answer = till.post("/v1/contacts", {"email": PLANTED["email"], "firstName": PLANTED["first"]})
    local_id = answer.json()["localId"]
    report = agent.privacy.forget(email=PLANTED["email"])
    assert report.queued_items_removed == 1
    assert agent.outbox.depth("engage").pending == 0
    with LedgerProbe(agent) as ledger:
        assert ledger.delivery_states(local_id) == {"forgotten": 1}


def test_forget_and_purge_over_the_api(agent_till):
    _, till = agent_till
    receipt = make_receipt("R-API")
    receipt["contact"] = {"matchKey": PLANTED["email"], "matchKeyType": "email"}
    till.post("/v1/receipts", receipt)
    answer = till.post("/v1/privacy/forget", {"email": PLANTED["email"]})
    assert answer.status_code == 200
    assert answer.json()["queued_items_stripped"] == 2
    assert till.post("/v1/privacy/forget", {}).status_code == 400
    assert till.post("/v1/privacy/purge", {}).status_code == 200
