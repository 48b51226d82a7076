"""Feed order: within a batch the last change to an id wins, whatever its kind (issue 16 §3)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.contacts import ContactCache
from agent.contacts.sync import ContactSync
from agent.core import crypto
from agent.core.health import Health
from agent.core.models import ContactPage, SourceContact
from agent.sandbox import SandboxCloud
from tests.test_contact_sync_e2e import lightspeed_source


class AfterFirstPage:
    """The real connector; once its first page is in hand, something happens in the cloud."""

    lists_everything = False  # no re-verification walk here

    def count_contacts(self) -> int | None:
        return None

    def __init__(self, source, then) -> None:
        self.name = source.name
        self._source = source
        self._then = then

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        page = self._source.fetch_contact_changes(cursor, limit)
        if self._then is not None:
            self._then, then = None, self._then
            then()
        return page


def open_cache(directory: Path) -> ContactCache:
    keyring = crypto.load_or_create(directory / "keyring.json", may_create=True)
    return ContactCache(directory, keyring, default_region="SE")


def test_a_customer_deleted_while_the_download_runs_is_gone_after_that_run(tmp_path):
    cloud = SandboxCloud(seed=31).serve()
    cache = open_cache(tmp_path)
    try:
        ids = cloud.lightspeed.seed_customers(100)
        phone = cloud.lightspeed.customers[ids[0]]["phone"]
        source = AfterFirstPage(
            lightspeed_source(cloud.url, tmp_path), lambda: cloud.lightspeed.delete_customer(ids[0])
        )
        # Seen alive on page 1, deleted on page 6: both in one batch of the first download.
        ContactSync(source, cache, Health(), page_size=20).run_once()
        assert cache.find("phone", phone) == []
        assert cache.get(ids[0]) is None
        assert cache.stats()["contacts"] == 99
    finally:
        cache.close()
        cloud.stop()


def test_a_deletion_in_a_batch_forgets_the_person_even_when_the_cache_never_held_them(tmp_path):
    cache = open_cache(tmp_path)
    forgotten: list[str | None] = []
    alive = SourceContact(contact_id="c-1", email="zz.brief.1@example.com")
    pages = [
        ContactPage(contacts=[alive], cursor="1", has_more=True),
        ContactPage(
            contacts=[SourceContact(contact_id="c-1", deleted=True)], cursor="2", has_more=False
        ),
    ]
    try:
        sync = ContactSync(
            ScriptedFeed(pages), cache, Health(), on_deleted=lambda c: forgotten.append(c.email)
        )
        sync.run_once()
        assert forgotten == ["zz.brief.1@example.com"]
        assert cache.get("c-1") is None
    finally:
        cache.close()


class ScriptedFeed:
    """A feed of pages in order; the cursor is the index of the next page."""

    name = "scripted"
    lists_everything = False  # no re-verification walk here

    def count_contacts(self) -> int | None:
        return None

    def __init__(self, pages: list[ContactPage]) -> None:
        self.pages = pages

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        return self.pages[int(cursor or 0)]


# -- the property: any feed, any split into pages and batches, any crash points ----------------

IDS = [f"c-{n}" for n in range(6)]
change = st.one_of(
    st.builds(
        lambda i, n: SourceContact(contact_id=i, member_number=f"M-{i}-{n}"),
        st.sampled_from(IDS),
        st.integers(0, 99),
    ),
    st.builds(lambda i: SourceContact(contact_id=i, deleted=True), st.sampled_from(IDS)),
)


class ChangeLog:
    """The cloud's changes in order; a page is the next `limit` after a cursor (an index)."""

    name = "log"
    lists_everything = False  # no re-verification walk here

    def count_contacts(self) -> int | None:
        return None

    def __init__(self, changes: list[SourceContact], crash_at_calls: set[int]) -> None:
        self.changes = changes
        self.crash_at_calls = crash_at_calls
        self.calls = 0

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> ContactPage:
        self.calls += 1
        if self.calls in self.crash_at_calls:
            raise CrashError(f"crash at call {self.calls}")
        start = int(cursor or 0)
        chunk = self.changes[start : start + limit]
        end = start + len(chunk)
        return ContactPage(contacts=chunk, cursor=str(end), has_more=end < len(self.changes))


class CrashError(Exception):
    """The process died here; the next sync starts over from what was saved."""


def cloud_model(changes: list[SourceContact]) -> dict[str, str]:
    """What the cloud holds after every change in order: id -> member number."""
    state: dict[str, str] = {}
    for c in changes:
        if c.deleted:
            state.pop(c.contact_id, None)
        else:
            state[c.contact_id] = str(c.member_number)
    return state


def cached(cache: ContactCache) -> dict[str, str]:
    found = {}
    for contact_id in IDS:
        contact = cache.get(contact_id)
        if contact is not None:
            found[contact_id] = str(contact.member_number)
    return found


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.lists(change, max_size=40),
    page_size=st.integers(1, 7),
    batch_contacts=st.integers(1, 20),
    crashes=st.sets(st.integers(1, 30), max_size=4),
    split=st.integers(0, 40),
)
def test_the_cache_equals_the_cloud_after_any_split_and_crashes(
    changes, page_size, batch_contacts, crashes, split
):
    with tempfile.TemporaryDirectory() as directory:
        cache = open_cache(Path(directory))
        try:
            # Two runs: the feed up to `split`, then the rest arrives (a delta run), each
            # interrupted at the crash points and resumed from what was saved.
            log = ChangeLog(changes[:split], crashes)
            for arrived in (changes[:split], changes):
                log.changes = arrived
                drain(log, cache, page_size, batch_contacts)
            assert cached(cache) == cloud_model(changes)
        finally:
            cache.close()


def drain(log: ChangeLog, cache: ContactCache, page_size: int, batch_contacts: int) -> None:
    for _ in range(40):
        sync = ContactSync(log, cache, Health(), page_size=page_size, batch_contacts=batch_contacts)
        try:
            sync.run_once()
            return
        except CrashError:
            continue
    raise AssertionError("never drained")
