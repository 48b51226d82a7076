"""The live lookup's bound (issue 16 §5): one deadline for every key, a pool no abandoned call
holds, "timeout" instead of "not found", and a registration that never duplicates a member."""

from __future__ import annotations

import time

import pytest

from agent.sandbox import SandboxCloud
from tests.conftest import base_config, merged

BOUND = 0.8
SLACK = 0.35  # our own HTTP round trip, the cache and the queue commit on a busy machine


@pytest.fixture
def cloud():
    served = SandboxCloud(seed=41).serve()
    try:
        yield served
    finally:
        served.stop()


def engage_source(tmp_path, cloud: SandboxCloud, **extra):
    return merged(
        base_config(tmp_path),
        {
            "contacts": {"source": "engage", "lookup_timeout_seconds": BOUND},
            "destinations": {"engage": {"base_url": cloud.url}},
            **extra,
        },
    )


def test_a_registration_with_email_and_phone_waits_one_bound_not_one_per_key(
    start_agent, tmp_path, cloud
):
    cloud.faults.set_latency(3.0, api="engage")
    _, till = start_agent(engage_source(tmp_path, cloud))
    timings, answers = [], []
    for n in range(3):
        started = time.monotonic()
        answer = till.post(
            "/v1/contacts", {"email": f"zz.slow.{n}@example.com", "mobilePhone": f"+4670000009{n}"}
        )
        timings.append(time.monotonic() - started)
        answers.append(answer)
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.json()["status"] for a in answers] == ["queued"] * 3
    assert [a.json()["source"] for a in answers] == ["timeout"] * 3  # queued: the safe path
    assert max(timings) < BOUND + SLACK, timings


def test_abandoned_calls_never_hold_the_pool_later_lookups_need(start_agent, tmp_path, cloud):
    cloud.faults.set_latency(3.0, api="engage")
    _, till = start_agent(engage_source(tmp_path, cloud))
    for n in range(6):  # each abandoned at the bound while the cloud sits on it for 3 s
        started = time.monotonic()
        slow = till.get("/v1/contacts/lookup", params={"email": f"zz.nobody.{n}@example.com"})
        assert time.monotonic() - started < BOUND + SLACK
        assert slow.status_code == 200, slow.text
        answer = slow.json()
        assert (answer["source"], answer["ageSeconds"], answer["contact"]) == (
            "timeout",
            None,
            None,
        )
        assert answer["cacheState"] == "loading"  # the first download is stuck on the same cloud
    cloud.faults.set_latency(0.0, api="engage")
    contact_id = cloud.engage.add_contact(email="zz.known@example.com")
    started = time.monotonic()
    found = till.get("/v1/contacts/lookup", params={"email": "zz.known@example.com"})
    assert time.monotonic() - started < BOUND + SLACK
    assert found.json()["source"] == "cloud"  # not stuck behind the abandoned calls
    assert found.json()["contact"]["contactId"] == contact_id


def test_a_registration_that_timed_out_never_makes_a_second_member(start_agent, tmp_path, cloud):
    existing = cloud.engage.add_contact(email="zz.twice@example.com", mobilePhone="+46700000077")
    cloud.faults.set_latency(3.0, api="engage")
    agent, till = start_agent(engage_source(tmp_path, cloud, delivery={"enabled": True}))
    answer = till.post("/v1/contacts", {"email": "zz.twice@example.com", "firstName": "Test"})
    assert answer.json()["status"] == "queued"
    assert answer.json()["source"] == "timeout"
    cloud.faults.set_latency(0.0, api="engage")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        depth = agent.outbox.depth("engage")
        if depth.pending == 0 and depth.claimed == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the registration was not delivered")
    twins = [c for c in cloud.engage.contacts.values() if c.get("email") == "zz.twice@example.com"]
    assert [c["id"] for c in twins] == [existing]
    assert twins[0]["firstName"] == "Test"  # the registration updated the member it found
