"""Contact sync: a source's delta feed into the cache page by page, then a ghost sweep."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from agent import health, models
from agent.contacts import ContactCache, latest_changes

log = logging.getLogger(__name__)


class ContactSource(Protocol):
    """A cloud that reports contact changes after a cursor (agent/connectors/base.py)."""

    name: str

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> models.ContactPage: ...


FetchOne = Callable[[str], models.SourceContact | None]
WALK_SUFFIX = "#verify"  # the cursor of the re-verification walk, beside the feed's own
# A first download into a cache holding fewer than this (live lookups' answers before the first
# sync) loads without the lookup indexes; a bigger one (another source's) keeps them.
BULK_LOAD_BELOW = 10_000


@dataclass
class SyncReport:
    pages: int = 0
    changes: int = 0
    ghosts_checked: int = 0
    ghosts_removed: int = 0
    walked: int = 0  # contacts re-verified by the walk from the source's start
    fetch_seconds: float = 0.0  # waiting for and reading the feed's pages
    apply_seconds: float = 0.0  # normalising, blinding, sealing and writing them here


class ContactSync:
    """Drains the feed from the saved cursor; a crash replays at most the page in flight.

    Then it re-verifies, so that the contact TTL purges only what the cloud no longer has:
    every contact is verified again within verify_within_seconds, by a walk from the
    source's start a few pages a run where the feed lists everyone (Lightspeed's version
    cursor), else by a ghost sweep grown to the needed size (Engage). The sweep of the
    ghost_batch least recently verified runs either way.
    """

    def __init__(
        self,
        source: ContactSource,
        cache: ContactCache,
        board: health.Health,
        *,
        page_size: int = 200,
        batch_contacts: int = 4000,
        ghost_batch: int = 10,
        fetch_one: FetchOne | None = None,
        on_deleted: Callable[[models.SourceContact], object] | None = None,
        verify_within_seconds: float = 0.0,
        run_every_seconds: float = 0.0,
    ) -> None:
        self._on_deleted = on_deleted
        self._source = source
        self._cache = cache
        self._health = board
        self._page_size = page_size
        self._batch_contacts = batch_contacts
        self._ghost_batch = ghost_batch
        self._fetch_one = fetch_one
        self._running = threading.Lock()  # the scheduler's run and one asked for by hand
        self._walks = bool(getattr(source, "lists_everything", False))
        both = verify_within_seconds > 0 and run_every_seconds > 0
        self._runs_per_round = verify_within_seconds / run_every_seconds if both else 0.0

    def run_once(self, progress: Callable[[int], object] | None = None) -> SyncReport:
        """Every page up to now, each applied with its cursor in one transaction; then ghosts."""
        with self._running:
            return self._run(progress)

    def _run(self, progress: Callable[[int], object] | None) -> SyncReport:
        report = SyncReport()
        cursor = self._cache.cursor(self._source.name)
        if cursor is None and int(self._cache.stats()["contacts"] or 0) < BULK_LOAD_BELOW:
            with self._cache.bulk_load():  # the initial download
                self._drain(cursor, report, progress)
                started = time.perf_counter()
            report.apply_seconds += time.perf_counter() - started  # its indexes, built at exit
        else:
            self._drain(cursor, report, progress)
        self._sweep_ghosts(report)
        self._walk(report)
        self._health.report(
            f"sync:{self._source.name}", health.OK, f"{report.changes} changes applied"
        )
        log.info("contact sync done", extra={"report": report.__dict__})
        return report

    def _drain(
        self, cursor: str | None, report: SyncReport, progress: Callable[[int], object] | None
    ) -> None:
        pending: list[models.ContactPage] = []
        while True:
            started = time.perf_counter()
            page = self._source.fetch_contact_changes(cursor, self._page_size)
            report.fetch_seconds += time.perf_counter() - started
            pending.append(page)
            report.pages += 1
            report.changes += len(page.contacts)
            cursor = page.cursor
            done = not page.has_more
            if done or sum(len(p.contacts) for p in pending) >= self._batch_contacts:
                started = time.perf_counter()
                self._apply(self._source.name, pending, progress)
                report.apply_seconds += time.perf_counter() - started
                pending = []
            if done:
                return

    def _apply(
        self, key: str, pages: list[models.ContactPage], progress: Callable[[int], object] | None
    ) -> None:
        """A few pages in one transaction with the last cursor: fewer, larger commits (P4)."""
        final = latest_changes(pages)
        earlier = {c.contact_id: c for page in pages for c in page.contacts if not c.deleted}
        self._forget_deleted((c for c in final.values() if c.deleted), earlier)
        self._cache.apply_pages(key, pages)
        if progress is not None:
            progress(sum(len(p.contacts) for p in pages))

    def _forget_deleted(
        self,
        deleted: Iterable[models.SourceContact],
        earlier: Mapping[str, models.SourceContact] | None = None,
    ) -> None:
        """Deleted in the cloud: forgotten everywhere here, queued receipts included.

        The deletion carries only an id; the cache (or an earlier page of the same batch) still
        knows the person's email and phone, so they are looked up before the cache row goes.
        """
        if self._on_deleted is None:
            return
        for gone in deleted:
            cached = self._cache.get(gone.contact_id)
            newer = (earlier or {}).get(gone.contact_id)
            for known in (cached, None if newer == cached else newer):
                if known is not None and (known.email or known.mobile_phone):
                    self._on_deleted(known)

    def _sweep_ghosts(self, report: SyncReport) -> None:
        """Re-fetch the least recently verified few: catches what a delta feed missed."""
        if self._fetch_one is None:
            return
        for contact_id in self._cache.least_recently_verified(self._sweep_size()):
            fresh = self._fetch_one(contact_id)
            report.ghosts_checked += 1
            if fresh is None or fresh.deleted:
                # Gone in the cloud though the feed never said so: forgotten as a deletion is.
                # (on_deleted may already have taken the row with the person's other records.)
                self._forget_deleted([models.SourceContact(contact_id=contact_id, deleted=True)])
                self._cache.delete([contact_id])
                report.ghosts_removed += 1
            else:
                self._cache.put(fresh)  # verified now: the back of the sweep's line

    def _share(self) -> int:
        """How many contacts a run must re-verify for all of them to be within the bound."""
        if self._runs_per_round <= 0:
            return 0
        return math.ceil(int(self._cache.stats()["contacts"] or 0) / self._runs_per_round)

    def _sweep_size(self) -> int:
        return self._ghost_batch if self._walks else max(self._ghost_batch, self._share())

    def _walk(self, report: SyncReport) -> None:
        """A few pages of the whole list from its start, applied: each contact there is verified
        now, and one the cloud no longer has is not (the TTL purge takes it). At the end the
        walk starts over."""
        if not self._walks or self._runs_per_round <= 0:
            return
        key = self._source.name + WALK_SUFFIX
        cursor = self._cache.cursor(key)
        for _ in range(max(1, math.ceil((self._share() + 1) / self._page_size))):
            page = self._source.fetch_contact_changes(cursor, self._page_size)
            report.walked += len(page.contacts)
            self._apply(key, [page], None)
            if not page.has_more:
                self._cache.set_cursor(key, None)
                return
            cursor = page.cursor
