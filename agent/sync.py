"""Contact sync: a source's delta feed into the cache page by page, then a ghost sweep."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from agent import health, models
from agent.contacts import ContactCache

log = logging.getLogger(__name__)


class ContactSource(Protocol):
    """A cloud that reports contact changes after a cursor (agent/connectors/base.py)."""

    name: str

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> models.ContactPage: ...


FetchOne = Callable[[str], models.SourceContact | None]


@dataclass
class SyncReport:
    pages: int = 0
    changes: int = 0
    ghosts_checked: int = 0
    ghosts_removed: int = 0
    fetch_seconds: float = 0.0  # waiting for and reading the feed's pages
    apply_seconds: float = 0.0  # normalising, blinding, sealing and writing them here


class ContactSync:
    """Drains the feed from the saved cursor; a crash replays at most the page in flight."""

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

    def run_once(self, progress: Callable[[int], object] | None = None) -> SyncReport:
        """Every page up to now, each applied with its cursor in one transaction; then ghosts."""
        with self._running:
            return self._run(progress)

    def _run(self, progress: Callable[[int], object] | None) -> SyncReport:
        report = SyncReport()
        cursor = self._cache.cursor(self._source.name)
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
                self._apply(pending, progress)
                report.apply_seconds += time.perf_counter() - started
                pending = []
            if done:
                break
        self._sweep_ghosts(report)
        self._health.report(
            f"sync:{self._source.name}", health.OK, f"{report.changes} changes applied"
        )
        log.info("contact sync done", extra={"report": report.__dict__})
        return report

    def _apply(
        self, pages: list[models.ContactPage], progress: Callable[[int], object] | None
    ) -> None:
        """A few pages in one transaction with the last cursor: fewer, larger commits (P4)."""
        self._forget_deleted(c for page in pages for c in page.contacts if c.deleted)
        self._cache.apply_pages(self._source.name, pages)
        if progress is not None:
            progress(sum(len(p.contacts) for p in pages))

    def _forget_deleted(self, deleted: Iterable[models.SourceContact]) -> None:
        """Deleted in the cloud: forgotten everywhere here, queued receipts included.

        The deletion carries only an id; the cache still knows the person's email and phone,
        so they are looked up before the cache row goes.
        """
        if self._on_deleted is None:
            return
        for gone in deleted:
            known = self._cache.get(gone.contact_id)
            if known is not None and (known.email or known.mobile_phone):
                self._on_deleted(known)

    def _sweep_ghosts(self, report: SyncReport) -> None:
        """Re-fetch the least recently verified few: catches what a delta feed missed."""
        if self._fetch_one is None:
            return
        for contact_id in self._cache.least_recently_verified(self._ghost_batch):
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
