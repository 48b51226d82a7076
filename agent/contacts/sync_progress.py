"""The first contact download's progress: contacts so far, rate, and an estimated finish."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

LOADING, READY = "loading", "ready"


class ProgressTracker:
    """What the status page, `till-agent status` and lookups say about the cache's first load.

    "loading" until a sync has once reached the end of the source's feed (kept in the cache
    file, so a restart mid-download still says so), then "ready". The rate is this run's
    (contacts applied ÷ time since it started, waits included); the finish is estimated only
    when the source can say how many contacts it has. Written by the sync's thread, read by
    the API's threads: every read and write holds the lock.
    """

    def __init__(
        self,
        allowed_requests_per_second: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allowed = allowed_requests_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._drained = False
        self._running = False
        self._contacts = 0  # in the cache now (estimated during a run)
        self._run_contacts = 0  # changes applied by this run, deletions included
        self._run_pages = 0
        self._started = 0.0
        self._total: int | None = None

    @property
    def total(self) -> int | None:
        """How many contacts the source said it has (None: it cannot say)."""
        with self._lock:
            return self._total

    def restore(self, drained: bool, contacts: int) -> None:
        """Where the cache stood at start: drained once already, and how many it holds."""
        with self._lock:
            self._drained, self._contacts = drained, contacts

    def begin(self, contacts: int, count: Callable[[], int | None]) -> None:
        """A run starts; while still loading, the source is asked how many contacts it has."""
        total = None if self._drained else count()
        with self._lock:
            self._running, self._total = True, total
            self._run_contacts, self._run_pages = 0, 0
            self._contacts, self._started = contacts, self._clock()

    def applied(self, changes: int, pages: int) -> None:
        with self._lock:
            self._run_contacts += changes
            self._run_pages += pages
            self._contacts += changes  # updates and deletions make this an estimate

    def drained(self) -> None:
        with self._lock:
            self._drained = True

    def end(self, contacts: int) -> None:
        with self._lock:
            self._running, self._contacts = False, contacts

    def snapshot(self) -> dict[str, Any]:
        """{"cacheState": "loading" | "ready", "progress": {...} while loading, else None}."""
        with self._lock:
            if self._drained:
                return {"cacheState": READY, "progress": None}
            return {"cacheState": LOADING, "progress": self._progress()}

    def _progress(self) -> dict[str, Any]:
        elapsed = self._clock() - self._started if self._running else 0.0
        rate = self._run_contacts / elapsed if elapsed > 0 else None
        finish = None
        if rate and self._total is not None:
            seconds = max(0, self._total - self._contacts) / rate
            finish = dt.datetime.fromtimestamp(time.time() + seconds, dt.UTC)
        return {
            "running": self._running,
            "contacts": self._contacts,
            "total": self._total,
            "pages": self._run_pages,
            "contactsPerSecond": None if rate is None else round(rate, 1),
            "pagesPerSecond": None if elapsed <= 0 else round(self._run_pages / elapsed, 2),
            "allowedRequestsPerSecond": None if self._allowed is None else round(self._allowed, 2),
            "estimatedFinishAt": None if finish is None else finish.isoformat(timespec="seconds"),
        }


def contacts_in(stats: Mapping[str, Any]) -> int:
    """The contact count of ContactCache.stats()."""
    return int(stats["contacts"] or 0)
