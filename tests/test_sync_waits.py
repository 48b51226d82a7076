"""A sync run under a throttling source (issue 16 §1, §2): a 429 or a failure is waited out and
the run goes on; what was fetched is applied before any wait; requests keep to the budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import app
from agent.connectors import KINDS
from agent.contacts import LOOKUP_INDEXES
from agent.contacts.sync import ContactSync
from agent.core import config
from agent.core.errors import StoppingError, ThrottledError
from agent.core.health import Health
from agent.core.models import ContactPage
from agent.core.retry import Backoff
from agent.sandbox import SandboxCloud
from tests.conftest import merged, wait_for
from tests.test_contact_sync_e2e import lightspeed_config
from tests.test_feed_order import open_cache
from tests.test_sync import lookup_indexes

PAGE = 20


class OnPage:
    """The agent's Lightspeed connector; once page n is in hand, something happens in the cloud."""

    lists_everything = False  # no re-verification walk here

    def count_contacts(self) -> int | None:
        return None

    def __init__(self, source, n: int, then: Callable[[], object]) -> None:
        self.name = source.name
        self.source = source
        self._n = n
        self._then = then
        self.pages = 0

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        page = self.source.fetch_contact_changes(cursor, limit)
        self.pages += 1
        if self.pages == self._n:
            self._then()
        return page


@pytest.fixture
def cloud():
    served = SandboxCloud(seed=51).serve()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def cache(tmp_path):
    store = open_cache(tmp_path)
    yield store
    store.close()


def source_for(cloud: SandboxCloud, tmp_path: Path, **limits):
    """The connector as the agent builds it: its session charges the destination's budget."""
    raw = merged(lightspeed_config(tmp_path, cloud.url), {"destinations": {"lightspeed": limits}})
    settings = config.from_mapping(raw, {}, KINDS)
    return app.build_connectors(settings, app.rate_budgets(settings))["lightspeed"]


def statuses(cloud: SandboxCloud) -> list[int]:
    return [r.status for r in cloud.requests if r.api == "lightspeed"]


def test_a_429_on_the_fifth_page_is_waited_out_and_the_run_goes_on(cloud, cache, tmp_path):
    cloud.lightspeed.seed_customers(200)
    source = OnPage(
        source_for(cloud, tmp_path),
        4,
        lambda: cloud.faults.fail_next(429, api="lightspeed", retry_after=1),
    )
    report = ContactSync(source, cache, Health(), page_size=PAGE).run_once()
    assert cache.stats()["contacts"] == 200  # the same run, not the next one 15 minutes later
    assert statuses(cloud).count(429) == 1
    assert report.waited_seconds >= 1.0
    assert cache.drained_at("lightspeed") is not None


def test_an_http_date_retry_after_and_failures_are_waited_out_too(cloud, cache, tmp_path):
    cloud.lightspeed.seed_customers(100)

    def trouble() -> None:
        cloud.faults.fail_next(503, count=2, api="lightspeed")
        cloud.faults.fail_next(429, api="lightspeed", retry_after="date", retry_after_seconds=1)

    source = OnPage(source_for(cloud, tmp_path), 2, trouble)
    sync = ContactSync(source, cache, Health(), page_size=PAGE, backoff=Backoff(0.05, 0.2))
    report = sync.run_once()
    assert cache.stats()["contacts"] == 100
    assert sorted(s for s in statuses(cloud) if s != 200) == [429, 503, 503]
    assert report.waited_seconds >= 1.0  # a past HTTP-date still waits a second


def test_pages_fetched_before_a_wait_answer_lookups_during_it(cloud, cache, tmp_path):
    ids = cloud.lightspeed.seed_customers(100)
    first = cloud.lightspeed.customers[ids[0]]["phone"]
    source = OnPage(
        source_for(cloud, tmp_path),
        4,
        lambda: cloud.faults.fail_next(429, api="lightspeed", retry_after=3),
    )
    sync = ContactSync(source, cache, Health(), page_size=PAGE)  # one batch of 4,000 would hold all
    runner = threading.Thread(target=sync.run_once)
    runner.start()
    try:
        wait_for(lambda: 429 in statuses(cloud), seconds=10)
        wait_for(lambda: cache.stats()["contacts"] == 4 * PAGE, seconds=10)
        # the indexes are built as the wait begins, just after the last page is applied
        wait_for(lambda: lookup_indexes(cache) == set(LOOKUP_INDEXES), seconds=10)
        assert runner.is_alive()  # ... while it is still waiting out the 429 (3 s)
        assert [c.contact.contact_id for c in cache.find("phone", first)] == [ids[0]]
        assert sync.tracker.snapshot()["cacheState"] == "loading"
    finally:
        runner.join(30)
    assert cache.stats()["contacts"] == 100
    assert sync.tracker.snapshot() == {"cacheState": "ready", "progress": None}


def test_a_run_ends_on_its_wait_bound_and_the_next_goes_on_from_the_saved_cursor(
    cloud, cache, tmp_path
):
    cloud.lightspeed.seed_customers(100)
    source = OnPage(
        source_for(cloud, tmp_path),
        4,
        lambda: cloud.faults.fail_next(429, api="lightspeed", retry_after=5),
    )
    sync = ContactSync(source, cache, Health(), page_size=PAGE, max_wait_seconds=2)
    with pytest.raises(ThrottledError):
        sync.run_once()
    assert cache.stats()["contacts"] == 4 * PAGE  # fetched before the 429: applied, not dropped
    saved = cache.cursor("lightspeed")
    cloud.clear_requests()
    sync.run_once()
    assert cloud.requests[0].query["after"] == saved
    assert cache.stats()["contacts"] == 100


def test_a_stop_during_a_wait_ends_the_run_at_once_keeping_what_was_fetched(cloud, cache, tmp_path):
    cloud.lightspeed.seed_customers(100)
    source = OnPage(
        source_for(cloud, tmp_path),
        4,
        lambda: cloud.faults.fail_next(429, api="lightspeed", retry_after=60),
    )
    stop = threading.Event()
    sync = ContactSync(source, cache, Health(), page_size=PAGE, stop=stop)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            sync.run_once()
        except StoppingError as exc:
            failures.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    wait_for(lambda: 429 in statuses(cloud), seconds=10)
    stop.set()
    runner.join(5)
    assert not runner.is_alive()
    assert len(failures) == 1
    assert cache.stats()["contacts"] == 4 * PAGE


def test_the_sync_keeps_to_the_budget_and_never_meets_a_429(cache, tmp_path):
    # A Lightspeed-shaped window shrunk for the test: 30 requests per 2 s, at the sandbox too.
    cloud = SandboxCloud(
        seed=52, lightspeed_rate_limit=30, lightspeed_rate_window_seconds=2
    ).serve()
    try:
        cloud.lightspeed.seed_customers(80 * PAGE)
        source = source_for(cloud, tmp_path, requests_per_second=15, rate_window_seconds=2)
        started = time.monotonic()
        ContactSync(source, cache, Health(), page_size=PAGE).run_once()
        took = time.monotonic() - started
        assert cache.stats()["contacts"] == 80 * PAGE
        assert statuses(cloud).count(429) == 0
        # 81 pages (the last one empty-handed) at most 28 per 2.04 s: at least two windows more.
        assert took >= 2 * 2.0
    finally:
        cloud.stop()
