"""The ghost sweep over Lightspeed's sandbox: deletions the feed missed, re-verification, TTL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.connectors import KINDS
from agent.contacts import ContactCache
from agent.contacts.sync import ContactSync
from agent.core import crypto
from agent.core.health import Health
from agent.sandbox import SandboxCloud
from tests.conftest import merged
from tests.test_contact_sync_e2e import lightspeed_config, lightspeed_source

DAY = 86400.0


class Clock:
    """The cache's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cloud() -> Iterator[SandboxCloud]:
    served = SandboxCloud(seed=21).serve()
    try:
        yield served
    finally:
        served.stop()


def swept_sync(cloud: SandboxCloud, cache: ContactCache, tmp_path: Path, batch: int) -> ContactSync:
    """The sync the agent builds: the connector's fetch_contact is the sweep's re-fetch."""
    source = lightspeed_source(cloud.url, tmp_path)
    return ContactSync(source, cache, Health(), ghost_batch=batch, fetch_one=source.fetch_contact)


def open_cache(directory: Path, clock: Clock) -> ContactCache:
    keyring = crypto.load_or_create(directory / "keyring.json", may_create=True)
    return ContactCache(directory, keyring, default_region="SE", ttl_days=30, now=clock)


def forget_in_the_cloud(cloud: SandboxCloud, customer_id: str) -> None:
    """Removed through the sandbox's admin route: no deleted_at, nothing in the feed."""
    answer = requests.post(
        f"{cloud.admin_url}/_sandbox/lightspeed/forget", json={"id": customer_id}, timeout=5
    )
    assert answer.status_code == 200


def verified_at(cache: ContactCache, phone: str) -> float:
    [found] = cache.find("phone", phone)
    return found.verified_at


def test_the_sweep_removes_a_deletion_the_feed_missed_a_few_contacts_a_run(cloud, tmp_path):
    clock = Clock()
    cache = open_cache(tmp_path, clock)
    try:
        ids = cloud.lightspeed.seed_customers(20)
        phones = {i: cloud.lightspeed.customers[i]["phone"] for i in ids}
        sync = swept_sync(cloud, cache, tmp_path, 5)
        first = sync.run_once()
        assert (first.changes, first.ghosts_checked, first.ghosts_removed) == (20, 5, 0)
        ghost = ids[13]
        forget_in_the_cloud(cloud, ghost)
        removed, checked = 0, 0
        for _ in range(4):  # 5 a run: every contact is re-fetched within four runs
            clock.now += 60
            report = sync.run_once()
            assert report.changes == 0  # the feed never mentions the ghost
            removed, checked = removed + report.ghosts_removed, checked + report.ghosts_checked
        assert (removed, checked) == (1, 20)
        assert cache.find("phone", phones[ghost]) == []
        assert cache.get(ghost) is None
        assert cache.stats()["contacts"] == 19
        single = [r for r in cloud.requests if r.path.startswith("/api/2.0/customers/")]
        assert len(single) == 25
    finally:
        cache.close()


def test_a_swept_contact_is_verified_again_and_goes_to_the_back_of_the_line(cloud, tmp_path):
    clock = Clock()
    cache = open_cache(tmp_path, clock)
    try:
        ids = cloud.lightspeed.seed_customers(6)
        phones = [cloud.lightspeed.customers[i]["phone"] for i in ids]
        sync = swept_sync(cloud, cache, tmp_path, 0)
        sync.run_once()
        start = clock.now
        sweep = swept_sync(cloud, cache, tmp_path, 2)
        clock.now += 3600
        for customer_id in ids:  # changed with no new version: only a re-fetch can see it
            cloud.lightspeed.customers[customer_id]["first_name"] = "Swept"
        sweep.run_once()
        fresh = {c for c, p in zip(ids, phones, strict=True) if verified_at(cache, p) > start}
        assert len(fresh) == 2
        assert {verified_at(cache, p) for p in phones} == {start, start + 3600}
        assert set(cache.least_recently_verified(4)) == set(ids) - fresh
        names = {c: cache.get(c).first_name for c in ids}  # type: ignore[union-attr]
        assert {c for c, name in names.items() if name == "Swept"} == fresh
    finally:
        cache.close()


def test_contacts_not_verified_within_the_ttl_are_purged_and_verified_ones_stay(cloud, tmp_path):
    clock = Clock()
    cache = open_cache(tmp_path, clock)
    try:
        ids = cloud.lightspeed.seed_customers(10)
        sync = swept_sync(cloud, cache, tmp_path, 0)
        sync.run_once()
        sweep = swept_sync(cloud, cache, tmp_path, 4)
        clock.now += 29 * DAY
        sweep.run_once()  # four re-verified a day before the TTL runs out
        clock.now += 2 * DAY
        assert cache.purge_expired(clock()) == 6
        kept = {c for c in ids if cache.get(c) is not None}
        assert len(kept) == 4
        clock.now += 29 * DAY
        assert cache.purge_expired(clock()) == 4
        assert cache.stats()["contacts"] == 0
    finally:
        cache.close()


def test_the_running_agent_sweeps_a_lightspeed_ghost_away(start_agent, tmp_path, cloud):
    ids = cloud.lightspeed.seed_customers(12)
    phone = cloud.lightspeed.customers[ids[4]]["phone"]
    overrides: dict[str, Any] = merged(
        lightspeed_config(tmp_path, cloud.url), {"contacts": {"ghost_sweep_batch": 12}}
    )
    agent, till = start_agent(overrides)
    assert till.post("/v1/contacts/sync", {}).json()["changes"] == 12
    assert till.get("/v1/contacts/lookup", params={"mobilePhone": phone}).status_code == 200
    forget_in_the_cloud(cloud, ids[4])
    report = till.post("/v1/contacts/sync", {}).json()
    assert (report["changes"], report["ghosts_checked"], report["ghosts_removed"]) == (0, 12, 1)
    assert till.get("/v1/contacts/lookup", params={"mobilePhone": phone}).status_code == 404
    assert agent.contacts.stats()["contacts"] == 11


def test_a_walk_from_the_start_verifies_every_contact_within_the_bound(cloud, tmp_path):
    """Lightspeed: a few pages a run re-verify everyone in half the TTL; a ghost stays old."""
    clock = Clock()
    cache = open_cache(tmp_path, clock)
    try:
        ids = cloud.lightspeed.seed_customers(50)
        source = lightspeed_source(cloud.url, tmp_path)
        run_every = 15 * DAY / 4  # four runs a round
        sync = ContactSync(
            source,
            cache,
            Health(),
            page_size=10,
            ghost_batch=0,
            verify_within_seconds=15 * DAY,
            run_every_seconds=run_every,
        )
        assert sync.run_once().walked == 20  # ceil(50 / 4) contacts a run: two pages of ten
        forget_in_the_cloud(cloud, ids[45])
        walked = 0
        for _ in range(4):
            clock.now += run_every
            report = sync.run_once()
            assert report.changes == 0
            walked += report.walked
        assert walked == 20 + 20 + 9 + 20  # the round ends at the list's end, then starts over
        clock.now += 30 * DAY - 4 * run_every + 1  # the TTL since the first download
        assert cache.purge_expired(clock()) == 1
        assert cache.get(ids[45]) is None
        assert cache.stats()["contacts"] == 49
    finally:
        cache.close()


def test_without_a_walk_the_sweep_grows_to_verify_everyone_within_the_bound(tmp_path):
    """Engage lists changes, not everyone: the sweep re-fetches a share of the cache a run."""
    from agent import app
    from agent.core import config
    from tests.test_contact_sync_e2e import engage_config

    served = SandboxCloud(seed=22).serve()
    clock = Clock()
    cache = open_cache(tmp_path, clock)
    try:
        for n in range(30):
            served.engage.add_contact(email=f"zz.sweep.{n}@example.com")
        settings = config.from_mapping(engage_config(tmp_path, served.url), {}, KINDS)
        source: Any = app.build_connectors(settings)["engage"]
        sync = ContactSync(
            source,
            cache,
            Health(),
            ghost_batch=2,
            fetch_one=source.fetch_contact,
            verify_within_seconds=300,
            run_every_seconds=100,
        )
        assert sync.run_once().changes == 30
        checked = []
        for _ in range(3):
            clock.now += 100
            checked.append(sync.run_once().ghosts_checked)
        assert checked == [10, 10, 10]  # 30 contacts over three runs
        assert cache.purge_unverified(clock.now - 250) == 0  # every one verified in the round
    finally:
        cache.close()
        served.stop()
