"""Contact changes in bulk calls, over loopback against the sandbox: runs, ids, partial batches."""

from __future__ import annotations

import random
import time

import pytest

from agent.connectors import engage, make_session
from agent.core.ratelimit import RateBudget
from agent.delivery.bulk import BulkContacts, BulkSettings
from agent.delivery.dispatch import Dispatcher
from agent.ledger import DeadLetters
from agent.sandbox import SandboxCloud
from tests.conftest import base_config, make_receipt, merged, wait_for
from tests.fakes.senders import Clock
from tests.test_dispatch import SETTINGS, drain

KEY = "sandbox-engage-key"


@pytest.fixture
def cloud():
    sandbox = SandboxCloud(seed=7).serve()
    yield sandbox
    sandbox.stop()


def bulk_rig(start_agent, cloud, *, timeout=5.0, budget=None, **bulk):
    """An agent's own stores, a real Engage connector on the sandbox, a worker stepped by hand."""
    agent, till = start_agent({"destinations": {"loaded": {"enabled": False}}})
    settings = engage.EngageSettings(name="engage", base_url=cloud.url, api_key=KEY)
    connector = engage.create(settings, make_session("BulkTest/1", timeout))
    contacts = BulkContacts(
        "engage", connector, agent.outbox, agent.ledger, BulkSettings(**bulk), budget=budget
    )
    clock = Clock()
    dispatcher = Dispatcher(
        "engage",
        connector,
        agent.outbox,
        agent.ledger,
        agent.health,
        SETTINGS,
        resolver=connector,
        bulk=contacts,
        rng=random.Random(0),
        monotonic=clock,
        budget=budget,
    )
    return agent, till, dispatcher, clock


def register(till, *emails, **fields):
    ids = []
    for email in emails:
        answer = till.post("/v1/contacts", {"email": email, **fields})
        assert answer.status_code in (200, 201, 202), answer.text
        ids.append(answer.json()["localId"])
    return ids


def calls(cloud, method, suffix, ok_only=True):
    return [
        r
        for r in cloud.requests
        if r.api == "engage"
        and r.method == method
        and r.path.endswith(suffix)
        and (200 <= r.status < 300 or not ok_only)
    ]


def emails(first, count):
    return [f"member{n}@example.com" for n in range(first, first + count)]


@pytest.fixture
def delivering(start_agent, tmp_path, cloud):
    def start():
        overrides = {
            "delivery": {"enabled": True, "backoff_initial_seconds": 0.2},
            "destinations": {"engage": {"base_url": cloud.url}, "loaded": {"enabled": False}},
        }
        return start_agent(merged(base_config(tmp_path), overrides))

    return start


def test_registrations_from_an_outage_go_in_bulk_and_receipts_follow_with_cloud_ids(
    delivering, cloud
):
    cloud.faults.set_offline("refused")
    agent, till = delivering()
    first = register(till, *emails(0, 6))
    receipt = make_receipt("R-1", contact=False) | {"contact": {"localId": first[0]}}
    assert till.post("/v1/receipts", receipt).status_code == 202
    second = register(till, *emails(6, 4))
    receipt = make_receipt("R-2", contact=False) | {"contact": {"localId": second[2]}}
    assert till.post("/v1/receipts", receipt).status_code == 202
    time.sleep(0.5)
    cloud.faults.set_offline(None)
    wait_for(lambda: {"R-1", "R-2"} <= set(cloud.engage.receipts), seconds=30)
    bulk_posts = calls(cloud, "POST", "/contacts/bulk")
    assert [len(r.json) for r in bulk_posts] == [6, 4]
    assert calls(cloud, "POST", "/contacts", ok_only=False) == []  # none went alone
    assert len(cloud.engage.contacts) == 10
    by_email = {c["email"]: cid for cid, c in cloud.engage.contacts.items()}
    sent = {r.json["uniqueReceiptId"]: r for r in calls(cloud, "POST", "/receipts")}
    assert sent["R-1"].json["contact"] == {
        "matchKey": by_email["member0@example.com"],
        "matchKeyType": "contactId",
    }
    assert sent["R-2"].json["contact"]["matchKey"] == by_email["member8@example.com"]
    # Per destination order: R-1 between the two runs it sits between in the queue.
    order = [r for r in cloud.requests if r in bulk_posts or r is sent["R-1"]]
    assert order == [bulk_posts[0], sent["R-1"], bulk_posts[1]]
    assert agent.ledger.cloud_contact_id(second[2]) == by_email["member8@example.com"]


def test_only_the_rejected_row_of_a_batch_is_retried_alone_and_dead_lettered(start_agent, cloud):
    agent, till, dispatcher, clock = bulk_rig(start_agent, cloud)
    good = emails(0, 4)
    # Well formed, so intake takes it (issue 14 refuses malformed ones at the door), but the
    # tenant refuses it: the one row of the batch that does not go in.
    cloud.engage.refused_emails.add("member-bad@example.com")
    local_ids = register(till, good[0], good[1], "member-bad@example.com", good[2], good[3])
    drain(dispatcher, clock)
    assert len(calls(cloud, "POST", "/contacts/bulk")) == 1
    assert sorted(c["email"] for c in cloud.engage.contacts.values()) == sorted(good)
    dead = DeadLetters(agent.outbox).all("engage")
    assert [(d.record_key, d.status) for d in dead] == [(local_ids[2], 400)]
    assert dead[0].cloud_error_id == "InvalidEmailAddress"
    for local_id in local_ids[:2] + local_ids[3:]:
        assert agent.ledger.cloud_contact_id(local_id) is not None
    assert agent.outbox.depth("engage").pending == 0


def test_updates_go_in_one_patch_and_a_failed_row_alone(start_agent, cloud):
    agent, till, dispatcher, clock = bulk_rig(start_agent, cloud)
    known = [cloud.engage.add_contact(email=e) for e in emails(0, 3)]
    for cid in known:
        assert till.post("/v1/contacts", {"contactId": cid, "firstName": "Updated"}).ok
    till.post("/v1/contacts", {"contactId": "no-such-contact", "firstName": "Updated"})
    drain(dispatcher, clock)
    patches = calls(cloud, "PATCH", "/contacts/bulk")
    assert [len(r.json) for r in patches] == [4]
    assert all(cloud.engage.contacts[cid]["firstName"] == "Updated" for cid in known)
    dead = DeadLetters(agent.outbox).all("engage")
    assert [d.status for d in dead] == [404]
    assert agent.outbox.depth("engage").pending == 0


def test_a_create_whose_answer_was_lost_is_looked_up_never_sent_again(start_agent, cloud):
    agent, till, dispatcher, clock = bulk_rig(start_agent, cloud, timeout=0.5)
    local_ids = register(till, *emails(0, 4))
    cloud.faults.set_latency(1.0, api="engage")
    dispatcher.step()  # the batch goes in at the cloud, but its answer comes too late
    went_in = lambda: (cloud.engage.settle_batches(), len(cloud.engage.contacts) == 4)[1]  # noqa: E731
    wait_for(went_in, seconds=5)
    cloud.faults.set_latency(0.0, api="engage")
    assert agent.outbox.depth("engage").pending == 4
    drain(dispatcher, clock)
    assert len(calls(cloud, "POST", "/contacts/bulk", ok_only=False)) == 1
    assert len(cloud.engage.contacts) == 4
    assert all(agent.ledger.cloud_contact_id(local_id) for local_id in local_ids)
    assert agent.outbox.depth("engage").pending == 0


def test_a_throttled_batch_keeps_its_place_and_is_not_looked_up_before_resending(
    start_agent, cloud
):
    agent, till, dispatcher, clock = bulk_rig(start_agent, cloud)
    register(till, *emails(0, 3))
    till.post("/v1/receipts", make_receipt("R-1"))  # its bare phone goes as is, no lookup
    cloud.faults.storm_429(1, api="engage", retry_after_seconds=30)
    dispatcher.step()
    assert dispatcher.state.state == "throttled"
    assert dispatcher.state.paused_until - clock.now == pytest.approx(30, abs=1)
    assert agent.outbox.depth("engage").pending == 4
    drain(dispatcher, clock)
    lookups = calls(cloud, "GET", "/contacts/id", ok_only=False)
    assert len(lookups) == 3  # after the create only (a refused batch never went in)
    assert len(calls(cloud, "POST", "/contacts/bulk")) == 1
    assert "R-1" in cloud.engage.receipts


def test_a_short_run_goes_one_by_one(start_agent, cloud):
    _, till, dispatcher, clock = bulk_rig(start_agent, cloud, min_contacts=3)
    register(till, *emails(0, 2))
    drain(dispatcher, clock)
    assert calls(cloud, "POST", "/contacts/bulk", ok_only=False) == []
    assert len(calls(cloud, "POST", "/contacts")) == 2
    assert len(cloud.engage.contacts) == 2


def test_bulk_calls_stay_within_the_rate_budget(start_agent, tmp_path):
    cloud = SandboxCloud(seed=8, engage_rate_per_second=4, engage_bulk_seconds=0).serve()
    try:
        budget = RateBudget("engage", requests_per_second=4)
        _, till, dispatcher, clock = bulk_rig(start_agent, cloud, budget=budget, max_contacts=3)
        register(till, *emails(0, 6))
        drain(dispatcher, clock)
        engage_calls = [r for r in cloud.requests if r.api == "engage"]
        assert len(engage_calls) == 2 * (1 + 1 + 3)  # per run: create, status, three lookups
        assert [r for r in engage_calls if r.status == 429] == []
        assert len(cloud.engage.contacts) == 6
    finally:
        cloud.stop()


def test_a_batch_in_progress_is_polled_and_an_unknown_word_is_not_taken_for_finished(
    start_agent, cloud
):
    """Engage's status words are undocumented: an unknown word is polled again until the
    report's counts account for every row; then only the failed row goes again, alone."""
    cloud.engage.bulk_words = ("Busy", "AllDone")
    cloud.engage.bulk_seconds = 1.0
    agent, till, dispatcher, clock = bulk_rig(start_agent, cloud, status_poll_seconds=0.2)
    good = emails(0, 3)
    cloud.engage.refused_emails.add("member-bad@example.com")
    local_ids = register(till, good[0], "member-bad@example.com", good[1], good[2])
    drain(dispatcher, clock)
    polls = calls(cloud, "GET", "/contacts/bulk/status")
    assert len(polls) >= 3  # in progress for a second, polled every 0.2 s
    assert len(polls) <= 1.0 / 0.2 + 3
    assert len(calls(cloud, "POST", "/contacts/bulk")) == 1
    alone = calls(cloud, "POST", "/contacts", ok_only=False)
    assert [r.json["email"] for r in alone] == ["member-bad@example.com"]  # the failed row only
    assert len(cloud.engage.contacts) == 3
    assert [d.record_key for d in DeadLetters(agent.outbox).all("engage")] == [local_ids[1]]


def test_a_batch_that_never_finishes_is_polled_within_its_bound_then_retried(start_agent, cloud):
    cloud.engage.bulk_seconds = 3600.0
    agent, till, dispatcher, _clock = bulk_rig(
        start_agent, cloud, status_poll_seconds=0.1, status_timeout_seconds=0.5
    )
    register(till, *emails(0, 3))
    dispatcher.step()
    polls = calls(cloud, "GET", "/contacts/bulk/status")
    assert 2 <= len(polls) <= 0.5 / 0.1 + 2
    assert agent.outbox.depth("engage").pending == 3
