"""Contact sync against a scripted source: resumable, never skips a page, sweeps ghosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.contacts import LOOKUP_INDEXES, ContactCache
from agent.contacts.sync import ContactSync
from agent.core import crypto
from agent.core.health import Health
from agent.core.models import ContactPage, SourceContact


class PagedSource:
    """A version-cursor feed like Lightspeed's: contacts after a cursor, `limit` at a time."""

    name = "paged"
    lists_everything = False  # no re-verification walk here

    def count_contacts(self) -> int | None:
        return None

    def __init__(self, contacts: list[SourceContact]) -> None:
        self.contacts = contacts
        self.calls: list[str | None] = []
        self.fail_at_call: int | None = None

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        self.calls.append(cursor)
        if self.fail_at_call is not None and len(self.calls) == self.fail_at_call:
            raise ConnectionError("the link dropped")
        start = int(cursor or 0)
        chunk = self.contacts[start : start + limit]
        end = start + len(chunk)
        return ContactPage(contacts=chunk, cursor=str(end), has_more=end < len(self.contacts))


def people(count: int) -> list[SourceContact]:
    return [
        SourceContact(contact_id=f"c-{n}", member_number=f"M-{n}", mobile_phone=f"+4670001{n:04d}")
        for n in range(count)
    ]


@pytest.fixture
def cache(tmp_path):
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    store = ContactCache(tmp_path, keyring, default_region="SE")
    yield store
    store.close()


def test_the_initial_download_walks_every_page(cache):
    source = PagedSource(people(45))
    seen: list[int] = []
    report = ContactSync(source, cache, Health(), page_size=10).run_once(progress=seen.append)
    assert report.pages == 5
    assert sum(seen) == 45
    assert cache.stats()["contacts"] == 45
    assert cache.cursor("paged") == "45"


def test_a_crash_mid_sync_resumes_from_the_last_applied_page(cache):
    source = PagedSource(people(45))
    source.fail_at_call = 3
    with pytest.raises(ConnectionError):
        ContactSync(source, cache, Health(), page_size=10, batch_contacts=10).run_once()
    assert cache.cursor("paged") == "20"
    source.fail_at_call = None
    ContactSync(source, cache, Health(), page_size=10, batch_contacts=10).run_once()
    assert source.calls[3:] == ["20", "30", "40"]  # resumed, nothing skipped
    assert cache.stats()["contacts"] == 45


def test_pages_applied_together_share_one_cursor_and_a_crash_replays_them(cache):
    source = PagedSource(people(45))
    source.fail_at_call = 3
    with pytest.raises(ConnectionError):
        ContactSync(source, cache, Health(), page_size=10, batch_contacts=30).run_once()
    assert cache.cursor("paged") is None  # the first two pages waited for the third
    source.fail_at_call = None
    ContactSync(source, cache, Health(), page_size=10, batch_contacts=30).run_once()
    assert source.calls[3:] == [None, "10", "20", "30", "40"]
    assert cache.stats()["contacts"] == 45


def test_the_next_sync_asks_only_for_what_changed(cache):
    source = PagedSource(people(10))
    sync = ContactSync(source, cache, Health(), page_size=10)
    sync.run_once()
    source.contacts.append(SourceContact(contact_id="c-3", deleted=True))
    sync.run_once()
    assert source.calls[-1] == "10"
    assert cache.find("member", "M-3") == []


def test_the_ghost_sweep_removes_what_the_feed_missed(cache):
    source = PagedSource(people(5))
    alive = {"c-1", "c-2", "c-3", "c-4"}

    def fetch_one(contact_id: str) -> SourceContact | None:
        return (
            SourceContact(contact_id=contact_id, member_number="M-x")
            if contact_id in alive
            else None
        )

    sync = ContactSync(source, cache, Health(), page_size=10, ghost_batch=5, fetch_one=fetch_one)
    report = sync.run_once()
    assert report.ghosts_checked == 5
    assert report.ghosts_removed == 1
    assert cache.find("member", "M-0") == []


def test_a_deletion_in_the_cloud_forgets_the_person_everywhere_here(start_agent):
    from tests.conftest import make_receipt

    agent, till = start_agent()
    person = SourceContact(contact_id="c-9", email="zz.gone.55@example.com", member_number="M-9")
    source = PagedSource([person])
    sync = ContactSync(
        source,
        agent.contacts,
        agent.health,
        on_deleted=lambda c: agent.privacy.forget(email=c.email, mobile_phone=c.mobile_phone),
    )
    sync.run_once()
    receipt = make_receipt("R-GONE")
    receipt["contact"] = {"matchKey": "zz.gone.55@example.com", "matchKeyType": "email"}
    till.post("/v1/receipts", receipt)
    source.contacts.append(SourceContact(contact_id="c-9", deleted=True))
    sync.run_once()
    assert agent.contacts.find("member", "M-9") == []
    for destination in ("engage", "loaded"):
        items = agent.outbox.run(lambda b, d=destination: b.pending_items(d))
        assert [item.personal for _, item in items] == [None]  # the receipt goes on, anonymous


def lookup_indexes(cache: ContactCache | Path) -> set[str]:
    """The lookup indexes the cache file holds now, read on a connection of our own."""
    import sqlite3

    conn = sqlite3.connect(cache if isinstance(cache, Path) else cache.path)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    finally:
        conn.close()
    return {row[0] for row in rows} & set(LOOKUP_INDEXES)


def test_the_initial_download_builds_the_lookup_indexes_at_its_end(cache):
    source = PagedSource(people(45))
    during: list[set[str]] = []
    found: list[int] = []

    def look(_: int) -> None:
        during.append(lookup_indexes(cache))
        found.append(len(cache.find("member", "M-3")))  # answered by a scan meanwhile

    ContactSync(source, cache, Health(), page_size=10, batch_contacts=10).run_once(progress=look)
    assert during == [set()] * 5
    assert found == [1] * 5
    assert lookup_indexes(cache) == set(LOOKUP_INDEXES)
    source.contacts.append(SourceContact(contact_id="c-new", member_number="M-new"))
    during.clear()
    ContactSync(source, cache, Health(), page_size=10).run_once(progress=look)
    assert during == [set(LOOKUP_INDEXES)]  # a delta sync keeps them
    assert [c.contact.contact_id for c in cache.find("member", "M-new")] == ["c-new"]


def test_a_first_download_after_a_few_live_lookups_still_loads_in_bulk(cache):
    cache.put(SourceContact(contact_id="c-live", member_number="M-live"))  # a live lookup's
    during: list[set[str]] = []
    ContactSync(PagedSource(people(20)), cache, Health(), page_size=10).run_once(
        progress=lambda _: during.append(lookup_indexes(cache))
    )
    assert during == [set()]
    assert lookup_indexes(cache) == set(LOOKUP_INDEXES)
    assert [c.contact.contact_id for c in cache.find("member", "M-live")] == ["c-live"]
    assert cache.stats()["contacts"] == 21


def test_an_initial_download_cut_short_still_builds_the_indexes(cache):
    source = PagedSource(people(45))
    source.fail_at_call = 3
    with pytest.raises(ConnectionError):
        ContactSync(source, cache, Health(), page_size=10, batch_contacts=10).run_once()
    assert lookup_indexes(cache) == set(LOOKUP_INDEXES)
    assert cache.stats()["contacts"] == 20


KILLED_MID_LOAD = """
import os, signal, sys
from pathlib import Path
from agent.core import crypto
from agent.contacts import LOOKUP_INDEXES, ContactCache
from agent.core.models import ContactPage, SourceContact
directory = Path(sys.argv[1])
cache = ContactCache(directory, crypto.load_or_create(directory / "keyring.json", may_create=True),
                     default_region="SE")
load = cache.bulk_load()
load.__enter__()
page = ContactPage(contacts=[SourceContact(contact_id="c-1", member_number="M-1")], cursor="1",
                   has_more=True)
cache.apply_page("paged", page)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_mid_initial_download_gets_the_indexes_back_at_the_next_open(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    run = subprocess.run(
        [sys.executable, "-c", KILLED_MID_LOAD, str(tmp_path)], cwd=ROOT, timeout=60
    )
    assert run.returncode == -9
    assert lookup_indexes(tmp_path / "contacts.db") == set()  # the kill left them out
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=False)
    reopened = ContactCache(tmp_path, keyring, default_region="SE")
    try:
        assert lookup_indexes(reopened) == set(LOOKUP_INDEXES)
        assert [c.contact.contact_id for c in reopened.find("member", "M-1")] == ["c-1"]
        assert reopened.cursor("paged") == "1"
    finally:
        reopened.close()


def test_a_deletion_forgets_the_person_by_their_second_number_too(start_agent):
    from agent.app import forget_source_contact
    from tests.conftest import make_receipt

    agent, till = start_agent()
    person = SourceContact(
        contact_id="c-8",
        mobile_phone="+46700000098",
        other_phone="+4685550098",
        member_number="M-8",
    )
    source = PagedSource([person])
    sync = ContactSync(
        source,
        agent.contacts,
        agent.health,
        on_deleted=lambda c: forget_source_contact(agent.privacy, c),
    )
    sync.run_once()
    receipt = make_receipt("R-GONE-2")
    receipt["contact"] = {"matchKey": "08-555 00 98", "matchKeyType": "mobilePhone"}
    till.post("/v1/receipts", receipt)
    source.contacts.append(SourceContact(contact_id="c-8", deleted=True))
    sync.run_once()
    for destination in ("engage", "loaded"):
        items = agent.outbox.run(lambda b, d=destination: b.pending_items(d))
        assert [item.personal for _, item in items] == [None]  # tagged by the landline: gone
