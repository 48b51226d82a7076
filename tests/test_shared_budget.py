"""One budget per set of credentials (issue 16 §2): the sync, delivery and live lookups to the
same cloud share its published limit, and the sync leaves room for the others."""

from __future__ import annotations

import time

import pytest

from agent.core.ratelimit import RateBudget
from agent.sandbox import SandboxCloud
from tests.conftest import make_receipt

LIMIT = 20  # the sandbox's Engage: above this many calls in a clock second, 429
OURS = 18  # the agent's budget for it


def test_the_sync_takes_its_share_and_leaves_the_rest():
    budget = RateBudget("x", requests_per_second=20, window_seconds=1.0)
    background = 0
    while budget.acquire_background().allowed:
        background += 1
    foreground = 0
    while budget.acquire().allowed:
        foreground += 1
    assert (background, foreground) == (19, 1)  # 95 % of the window, the rest for the till


def test_the_read_back_takes_a_tenth_and_delivery_keeps_the_rest():
    budget = RateBudget("x", requests_per_second=40, window_seconds=1.0)
    read = 0
    while budget.acquire_readback().allowed:
        read += 1
    delivered = 0
    while budget.acquire().allowed:
        delivered += 1
    assert (read, delivered) == (4, 36)  # reconciliation's read-back: 10 % of the window


@pytest.mark.timeout(120)
def test_sync_delivery_and_lookups_to_one_cloud_never_meet_a_429(start_agent):
    cloud = SandboxCloud(seed=71, engage_rate_per_second=LIMIT).serve()
    try:
        emails = [f"zz.shared.{n}@example.com" for n in range(150)]
        for email in emails:
            cloud.engage.add_contact(email=email)
        agent, till = start_agent(
            {
                "delivery": {"enabled": True},
                "contacts": {"source": "engage", "page_size": 10},
                "destinations": {"engage": {"base_url": cloud.url, "requests_per_second": OURS}},
            }
        )
        for n in range(30):  # each: the buyer looked up (and created once), then the receipt
            assert till.post("/v1/receipts", make_receipt(f"R-SHARED-{n}")).status_code == 202
        for n in range(5):  # cache misses while it all runs: live lookups, same budget
            till.get("/v1/contacts/lookup", params={"email": f"zz.absent.{n}@example.com"})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready = till.get("/v1/status").json()["contacts"]["state"] == "ready"
            if ready and agent.outbox.depth("engage").pending == 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the download or the deliveries did not finish")
        calls = [r for r in cloud.requests if r.api == "engage"]
        assert [r.status for r in calls if r.status == 429] == []
        assert len(calls) > 2 * LIMIT  # long enough for the limit to matter
        busiest = max(sum(1 for r in calls if int(r.at) == int(c.at)) for c in calls)
        assert busiest <= LIMIT
        assert len(cloud.engage.receipts) == 30
    finally:
        cloud.stop()
