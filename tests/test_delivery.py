"""Delivery end to end over loopback against the sandbox cloud: order, waits, halts, rejects."""

from __future__ import annotations

import time

import pytest

from agent.connectors.base import idempotency_header
from agent.sandbox import SandboxCloud
from tests.conftest import base_config, make_receipt, merged, wait_for


@pytest.fixture
def cloud():
    sandbox = SandboxCloud(seed=3).serve()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def delivering(start_agent, tmp_path, cloud):
    """An agent with delivery on, both destinations pointed at the sandbox."""

    def start(**delivery):
        overrides = {
            "delivery": {"enabled": True, "backoff_initial_seconds": 0.2, **delivery},
            "destinations": {
                "engage": {"base_url": cloud.url},
                "loaded": {"base_url": cloud.url + "/loaded"},
            },
        }
        return start_agent(merged(base_config(tmp_path), overrides))

    return start


def sales_requests(cloud, ok_only=True):
    return [
        r
        for r in cloud.requests
        if r.api == "loaded" and "/pos/orders" in r.path and (200 <= r.status < 300 or not ok_only)
    ]


def test_receipts_reach_both_clouds_in_the_order_sold(delivering, cloud):
    _, till = delivering()
    ids = [f"R-{n:02d}" for n in range(12)]
    for receipt_id in ids:
        till.post("/v1/receipts", make_receipt(receipt_id))
    wait_for(
        lambda: set(cloud.loaded.orders) == set(ids) and set(cloud.engage.receipts) == set(ids)
    )
    first_seen = []
    for request in sales_requests(cloud):
        key = request.json.get("externalId") if isinstance(request.json, dict) else None
        if key and key not in first_seen:
            first_seen.append(key)
    assert first_seen == ids
    state = till.get("/v1/receipts/R-03").json()["destinations"]
    assert {d["destination"]: d["state"] for d in state} == {
        "engage": "delivered",
        "loaded": "delivered",
    }


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_is_honoured_in_both_forms(delivering, cloud, form):
    cloud.faults.storm_429(1, api="loaded", retry_after_form=form, retry_after_seconds=3)
    _, till = delivering()
    till.post("/v1/receipts", make_receipt("R-1", contact=False))
    wait_for(lambda: "R-1" in cloud.loaded.orders, seconds=20)
    calls = [r for r in cloud.requests if r.api == "loaded"]  # the token call may meet it first
    throttled = next(r for r in calls if r.status == 429)
    retried = next(r for r in calls if r.at > throttled.at)
    waited = retried.at - throttled.at
    # An HTTP-date has whole seconds: the wait it asks for is between 2 and 3 s.
    low = 3 * 0.9 if form == "seconds" else 2 * 0.9
    assert low <= waited <= 3 * 1.1 + 0.3, waited


def test_refused_credentials_halt_the_destination_and_keep_its_queue(delivering, cloud):
    cloud.faults.set_auth_failure("loaded")
    _, till = delivering(auth_probe_seconds=1.0)
    till.post("/v1/receipts", make_receipt("R-1", contact=False))
    wait_for(lambda: status_of(till, "loaded")["state"] == "halted")
    assert status_of(till, "loaded")["depth"] == 1
    assert till.get("/v1/health").json()["status"] == "failing"
    cloud.faults.set_auth_failure("loaded", on=False)
    wait_for(lambda: "R-1" in cloud.loaded.orders)
    wait_for(lambda: status_of(till, "loaded")["state"] == "online")


def test_a_rejected_receipt_is_dead_lettered_with_the_clouds_error_id(delivering, cloud):
    cloud.faults.reject_ids(["R-BAD"], status=400, api="loaded")
    _, till = delivering()
    till.post("/v1/receipts", make_receipt("R-BAD", contact=False))
    till.post("/v1/receipts", make_receipt("R-GOOD", contact=False))
    wait_for(lambda: "R-GOOD" in cloud.loaded.orders)
    wait_for(lambda: len(till.get("/v1/dead-letters").json()) == 1)
    (letter,) = till.get("/v1/dead-letters").json()
    assert letter["recordKey"] == "R-BAD"
    assert letter["status"] == 400
    assert letter["cloudErrorId"]


def test_an_outage_loses_nothing(delivering, cloud):
    _, till = delivering(backoff_max_seconds=1.0)
    cloud.faults.set_offline("refused")
    ids = [f"R-{n}" for n in range(10)]
    for receipt_id in ids:
        assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202
    wait_for(lambda: status_of(till, "loaded")["state"] == "offline")
    cloud.faults.set_offline(None)
    wait_for(lambda: set(cloud.loaded.orders) == set(ids), seconds=20)
    wait_for(lambda: set(cloud.engage.receipts) == set(ids), seconds=20)


def status_of(till, name: str) -> dict[str, object]:
    status = till.get("/v1/status").json()
    return next(d for d in status["destinations"] if d["name"] == name)


def test_sigkill_during_delivery_resends_with_the_same_key_and_the_cloud_holds_one(
    agent_process, cloud
):
    from tests.conftest import Till

    cloud.faults.set_latency(0.15, api="loaded")
    process = agent_process(
        {
            "delivery": {"enabled": True, "backoff_initial_seconds": 0.2},
            "destinations": {
                "engage": {"enabled": False},
                "loaded": {"base_url": cloud.url + "/loaded"},
            },
        }
    )
    process.start()
    till = Till(process.url, process.token)
    ids = [f"K-{n:02d}" for n in range(20)]
    for receipt_id in ids:
        assert till.post("/v1/receipts", make_receipt(receipt_id, contact=False)).status_code == 202
    till.close()
    wait_for(lambda: len(cloud.loaded.orders) >= 3)
    process.kill()  # mid-delivery: one send is in flight, its answer never acked
    process.start()
    wait_for(lambda: set(cloud.loaded.orders) == set(ids), seconds=30)
    accepted = cloud.accepted_receipts()["loaded"]  # counted at the cloud, send by send
    assert set(accepted) == set(ids)
    assert sum(accepted.values()) <= len(ids) + 1, accepted  # one kill: one send resent at most
    for key in (k for k, n in accepted.items() if n > 1):  # a resend: the same key, the same body
        sends = [r for r in sales_requests(cloud) if (r.json or {}).get("externalId") == key]
        assert {r.headers["Idempotency-Key"] for r in sends} == {idempotency_header(key)}
        assert len({r.body for r in sends}) == 1
    assert process.terminate() == 0


def test_an_unknown_buyer_is_never_made_a_member_and_its_sale_goes_by_its_key(
    start_agent, tmp_path, cloud
):
    """A phone typed at the till is not consent to join a loyalty programme: the sale goes to
    Engage tagged with its key in one request, and Engage matches it; nobody is created."""
    cloud.engage.add_contact(mobilePhone="+46700000002")
    overrides = {
        "delivery": {"enabled": True, "backoff_initial_seconds": 0.2},
        "destinations": {
            "engage": {"base_url": cloud.url},
            "loaded": {"base_url": cloud.url + "/loaded"},
        },
    }
    _, till = start_agent(merged(base_config(tmp_path), overrides))
    stranger = make_receipt("R-STRANGER")  # +46700000001: nobody in Engage
    known = make_receipt("R-KNOWN")
    known["contact"]["matchKey"] = "+46700000002"
    till.post("/v1/receipts", stranger)
    till.post("/v1/receipts", known)
    wait_for(lambda: {"R-STRANGER", "R-KNOWN"} <= set(cloud.engage.receipts))
    assert len(cloud.engage.contacts) == 1  # nobody was created
    sent = cloud.engage.receipts["R-STRANGER"]["contact"]
    assert (sent["matchKey"], sent["matchKeyType"]) == ("+46700000001", "mobilePhone")
    engage_paths = {r.path for r in cloud.requests if r.api == "engage"}
    assert engage_paths == {"/api/v2/receipts"}  # no lookup, no create: one request a sale
    assert till.get("/v1/dead-letters").json() == []
    wait_for(lambda: "R-STRANGER" in cloud.loaded.orders)  # the analytics cloud has it too


def test_a_recovered_cloud_is_noticed_by_the_probe_while_backing_off(delivering, cloud):
    """Issue 19 §5: the back-off may have grown to minutes; the probe notices recovery."""
    _, till = delivering(
        backoff_initial_seconds=60.0, backoff_max_seconds=300.0, recovery_probe_seconds=1.0
    )
    cloud.faults.set_offline("refused")
    till.post("/v1/receipts", make_receipt("R-1", contact=False))
    wait_for(lambda: status_of(till, "loaded")["state"] == "offline")
    loaded = status_of(till, "loaded")
    assert str(loaded["detail"]).startswith("no answer from the cloud:")
    assert float(str(loaded["pausedSeconds"])) > 30
    cloud.faults.set_offline(None)
    back = time.monotonic()
    wait_for(lambda: "R-1" in cloud.loaded.orders, seconds=10)
    assert time.monotonic() - back < 5  # the probe, not the 60 s back-off
    assert status_of(till, "loaded")["state"] == "online"


def test_retry_now_skips_the_back_off(delivering, cloud):
    _, till = delivering(backoff_initial_seconds=60.0, recovery_probe_seconds=120.0)
    cloud.faults.set_offline("refused")
    till.post("/v1/receipts", make_receipt("R-1", contact=False))
    wait_for(lambda: status_of(till, "loaded")["state"] == "offline")
    cloud.faults.set_offline(None)
    answer = till.post("/v1/delivery/retry-now", {"destination": "loaded"})
    assert answer.status_code == 202
    assert answer.json() == {"destinations": ["loaded"]}
    wait_for(lambda: "R-1" in cloud.loaded.orders, seconds=5)
    assert till.post("/v1/delivery/retry-now", {"destination": "nope"}).status_code == 404
    everyone = till.session.post(till.url + "/v1/delivery/retry-now", timeout=5)
    assert everyone.json() == {"destinations": ["engage", "loaded"]}
