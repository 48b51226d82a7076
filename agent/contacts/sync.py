"""Contact sync: a source's delta feed into the cache page by page, then a ghost sweep."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.contacts import ContactCache, latest_changes
from agent.contacts.sync_progress import ProgressTracker, contacts_in
from agent.core import health, models, ratelimit
from agent.core.errors import (
    AuthError,
    CloudError,
    RetryableError,
    StoppingError,
    ThrottledError,
)
from agent.core.retry import Backoff

log = logging.getLogger(__name__)


class ContactSource(Protocol):
    """A cloud that reports contact changes after a cursor (agent/connectors/base.py)."""

    name: str
    lists_everything: bool  # the feed from its start is every contact: walk it to re-verify

    def fetch_contact_changes(self, cursor: str | None, limit: int) -> models.ContactPage: ...

    def count_contacts(self) -> int | None: ...


FetchOne = Callable[[str], models.SourceContact | None]
Progress = Callable[[int], object]
WALK_SUFFIX = "#verify"  # the cursor of the re-verification walk, beside the feed's own
# A first download into a cache holding fewer than this (live lookups' answers before the first
# sync) loads without the lookup indexes; a bigger one (another source's) keeps them.
BULK_LOAD_BELOW = 10_000
# Retry-After is an HTTP-date at Lightspeed: whole seconds, so it can name a moment up to a
# second early. A 429 is never retried sooner than this.
MIN_THROTTLE_SECONDS = 1.0
SLICE_SECONDS = 5.0  # long waits are cut into slices, each beating the watchdog's heartbeat


@dataclass
class SyncReport:
    pages: int = 0
    changes: int = 0
    ghosts_checked: int = 0
    ghosts_removed: int = 0
    walked: int = 0  # contacts re-verified by the walk from the source's start
    fetch_seconds: float = 0.0  # waiting for and reading the feed's pages
    apply_seconds: float = 0.0  # normalising, blinding, sealing and writing them here
    waited_seconds: float = 0.0  # waiting out 429s and failures (not the pacing)


@dataclass
class _Run:
    """One run's state: pages fetched and not yet applied, and whether it loads in bulk."""

    key: str
    report: SyncReport
    progress: Progress | None
    pending: list[models.ContactPage] = field(default_factory=list)
    bulk: bool = False  # the lookup indexes are left out until the first wait or the end


class ContactSync:
    """Drains the feed from the saved cursor; a crash replays at most the batch in flight.

    A 429 or a failure inside a run is waited out (Retry-After, else backoff) and the run
    goes on, up to max_wait_seconds of such waits in all; every request is paced to the
    source's rate budget (its background share). Before any wait, what was fetched is
    applied, so lookups answer from it meanwhile.

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
        max_wait_seconds: float = 900.0,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
        heartbeat: Callable[[], None] | None = None,
        tracker: ProgressTracker | None = None,
    ) -> None:
        self._on_deleted = on_deleted
        self._source = source
        self._cache = cache
        self._health = board
        self._page_size = page_size
        self._batch_contacts = batch_contacts
        self._ghost_batch = ghost_batch
        self._fetch_one = fetch_one
        self._max_wait = max_wait_seconds
        self._backoff = backoff or Backoff(1.0, 60.0)
        self._rng = random.Random()
        self.stopping = stop or threading.Event()
        self._heartbeat = heartbeat or (lambda: None)
        self.tracker = tracker or ProgressTracker()
        self.tracker.restore(cache.drained_at(source.name) is not None, self._contacts())
        self._running = threading.Lock()  # the worker's run and one asked for by hand
        self._run_state: _Run | None = None
        self._walks = source.lists_everything
        both = verify_within_seconds > 0 and run_every_seconds > 0
        self._runs_per_round = verify_within_seconds / run_every_seconds if both else 0.0

    def beat(self) -> None:
        """The watchdog's proof that the sync's thread is alive."""
        self._heartbeat()

    def run_once(self, progress: Progress | None = None) -> SyncReport:
        """Every page up to now, each applied with its cursor in one transaction; then ghosts.

        One run at a time: a second caller waits its turn, beating the heartbeat meanwhile.
        """
        while not self._running.acquire(timeout=SLICE_SECONDS):
            self._heartbeat()
            if self.stopping.is_set():
                raise StoppingError("stopped while another contact sync ran")
        try:
            with ratelimit.scope(ratelimit.Scope(self._pause, background=True)):
                return self._run(progress)
        finally:
            self._running.release()

    def _run(self, progress: Progress | None) -> SyncReport:
        run = _Run(self._source.name, SyncReport(), progress)
        cursor = self._cache.cursor(self._source.name)
        first = cursor is None and int(self._cache.stats()["contacts"] or 0) < BULK_LOAD_BELOW
        self.tracker.begin(self._contacts(), self._count)
        self._run_state = run
        try:
            if first:
                run.bulk = True
                with self._cache.bulk_load():  # the initial download
                    self._drain(run, cursor)
                    started = time.perf_counter()
                run.report.apply_seconds += time.perf_counter() - started  # indexes, at exit
            else:
                self._drain(run, cursor)
        finally:
            self._run_state = None
            self.tracker.end(self._contacts())
        self._sweep_ghosts(run.report)
        self._walk(run.report)
        self._health.report(
            f"sync:{self._source.name}", health.OK, f"{run.report.changes} changes applied"
        )
        log.info("contact sync done", extra={"report": run.report.__dict__})
        return run.report

    def _contacts(self) -> int:
        return contacts_in(self._cache.stats())

    def _count(self) -> int | None:
        """How many contacts the source has, if it can say (Engage's contacts/count)."""
        try:
            count = self._source.count_contacts()
            return None if count is None else int(count)
        except (RetryableError, ValueError, TypeError) as exc:
            log.info("the source could not count its contacts: %s", type(exc).__name__)
            return None

    def _drain(self, run: _Run, cursor: str | None) -> None:
        failures = 0
        while True:
            try:
                page = self._fetch(run, cursor)
            except RetryableError as exc:  # a 429, a 5xx, the link: wait, then go on
                failures += 1
                self._wait_for_cloud(run, exc, failures)
                continue
            except CloudError as exc:
                self._flush(run)  # what was fetched is kept; this run ends, in words
                # Refused credentials will not mend by themselves: red, like a halted destination.
                state = health.FAILING if isinstance(exc, AuthError) else health.DEGRADED
                self._health.report(f"sync:{self._source.name}", state, str(exc))
                raise
            failures = 0
            run.pending.append(page)
            run.report.pages += 1
            run.report.changes += len(page.contacts)
            cursor = page.cursor
            if not page.has_more or _size(run.pending) >= self._batch_contacts:
                self._flush(run)
            if not page.has_more:
                self.tracker.drained()
                return

    def _fetch(self, run: _Run, cursor: str | None) -> models.ContactPage:
        started = time.perf_counter()
        try:
            return self._source.fetch_contact_changes(cursor, self._page_size)
        finally:
            run.report.fetch_seconds += time.perf_counter() - started

    def _wait_for_cloud(self, run: _Run, exc: RetryableError, failures: int) -> None:
        """Wait as the cloud asked (or back off), unless the run has waited enough: then the
        run ends with exc, and the next one goes on from the saved cursor."""
        self._flush(run)
        if isinstance(exc, ThrottledError):
            delay = max(MIN_THROTTLE_SECONDS, exc.retry_after_seconds)
        else:
            delay = self._backoff.delay(failures, self._rng)
        if run.report.waited_seconds + delay > self._max_wait:
            log.warning("contact sync: waited %.0f s in this run; ending it", self._max_wait)
            raise exc
        self._health.report(
            f"sync:{self._source.name}", health.DEGRADED, f"waiting {delay:.0f} s: {exc}"
        )
        if self._pause(delay):
            raise StoppingError("stopped while the contact sync waited for the cloud") from exc
        run.report.waited_seconds += delay

    def _pause(self, seconds: float) -> bool:
        """Any wait in a run (the budget's pacing, a 429): what was fetched is applied first,
        and a first download builds its lookup indexes now. True: a stop came."""
        run = self._run_state
        if run is not None:
            self._flush(run)
            if run.bulk:
                run.bulk = False
                self._cache.build_indexes()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._heartbeat()
            if self.stopping.wait(min(left, SLICE_SECONDS)):
                return True
        self._heartbeat()
        return self.stopping.is_set()

    def _flush(self, run: _Run) -> None:
        if not run.pending:
            return
        started = time.perf_counter()
        pages, run.pending = run.pending, []
        self._apply(run.key, pages)
        run.report.apply_seconds += time.perf_counter() - started
        self.tracker.applied(_size(pages), len(pages))
        if run.progress is not None:
            run.progress(_size(pages))
        self._heartbeat()

    def _apply(self, key: str, pages: list[models.ContactPage]) -> None:
        """A few pages in one transaction with the last cursor: fewer, larger commits (P4)."""
        final = latest_changes(pages)
        earlier = {c.contact_id: c for page in pages for c in page.contacts if not c.deleted}
        self._forget_deleted((c for c in final.values() if c.deleted), earlier)
        self._cache.apply_pages(key, pages)

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
                if known is not None and (known.email or known.mobile_phone or known.other_phone):
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
            self._apply(key, [page])
            if not page.has_more:
                self._cache.set_cursor(key, None)
                return
            cursor = page.cursor


def _size(pages: list[models.ContactPage]) -> int:
    return sum(len(p.contacts) for p in pages)


class SyncWorker:
    """The contact sync on a thread of its own, woken by the scheduler: a first download that
    waits for a throttling source for an hour never holds up the purge or the alerts."""

    def __init__(self, sync: ContactSync, board: health.Health, stop: threading.Event) -> None:
        self.sync = sync
        self._health = board
        self._stop = stop
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="contacts-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run soon (now, if no run is going on; else once the current one has ended)."""
        self._wake.set()

    def stop(self, timeout_seconds: float) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_seconds)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sync.beat()
            if not self._wake.wait(1.0) or self._stop.is_set():
                continue
            self._wake.clear()
            try:
                self.sync.run_once()
            except StoppingError:
                return
            except Exception as exc:  # a worker loop's top: report, keep the worker
                log.exception("contact sync failed")
                self._health.report("job:contacts-sync", health.DEGRADED, f"last run failed: {exc}")
            else:
                self._health.report("job:contacts-sync", health.OK, "last run succeeded")
