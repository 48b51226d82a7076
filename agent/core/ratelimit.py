"""Per-destination request rate and call budgets (pyrate-limiter), never exceeded."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyrate_limiter import Duration, Limiter, Rate, RateItem
from pyrate_limiter.buckets.in_memory_bucket import InMemoryBucket
from pyrate_limiter.buckets.sqlite_bucket import SQLiteBucket
from pyrate_limiter.clocks import MonotonicClock, TimeClock

from agent.core.errors import DeadlineError, StoppingError, ThrottledError

log = logging.getLogger(__name__)

BUDGET_WAIT_SECONDS = 60.0
PAUSE_SECONDS = 5.0  # a wait this long or longer pauses the destination instead
REQUEST_RATE = "request rate"
# Background work (the contact sync) leaves this share of each window to the calls a till
# waits for (live lookups) and to delivery ...
RESERVE_SHARE = 0.05
# ... and counts its window this much longer than published: the cloud counts a request when
# it arrives, we when it leaves, and latency moves a request across a window's edge.
WINDOW_MARGIN = 0.02
# Reconciliation's read-back (agent/ops/reconcile.py) may use at most this share of each window.
READBACK_SHARE = 0.1


@dataclass(frozen=True)
class Verdict:
    """May a call go now? If not, how long to wait and why."""

    allowed: bool
    wait_seconds: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Scope:
    """How the requests a thread makes wait for their budget, and when they must have answered.

    Opened by a caller that does not spend for itself (the sync, a live lookup); the HTTP
    session asks the destination's budget before each request (RateBudget.before_request).
    """

    wait: Callable[[float], bool]  # sleeps; True when a stop came
    deadline: float | None = None  # monotonic; each request gets what is left of it
    background: bool = False  # paced to the budget's background share (RESERVE_SHARE left)
    readback: bool = False  # paced to the read-back's share (READBACK_SHARE of the window)


_LOCAL = threading.local()


@contextmanager
def scope(opened: Scope) -> Iterator[None]:
    """The calling thread's requests follow `opened` until the block ends."""
    before = getattr(_LOCAL, "scope", None)
    _LOCAL.scope = opened
    try:
        yield
    finally:
        _LOCAL.scope = before


class RateBudget:
    """A request rate over a window (in memory, monotonic clock), a background share of it,
    and optional daily/monthly budgets (on disk).

    The rate is the destination's published limit: requests_per_second counted over
    window_seconds (Lightspeed: 350 per 300 s; Engage: 40 per 1 s). Every call made with the
    destination's credentials is charged here: delivery spends for itself (spend), the sync
    and live lookups through the session's hook (before_request) inside a Scope.
    The budgets live in a SQLite file so a restart does not hand out a fresh day's calls.
    """

    def __init__(
        self,
        name: str,
        *,
        requests_per_second: float,
        window_seconds: float = 1.0,
        daily_calls: int = 0,
        monthly_calls: int = 0,
        budget_file: Path | None = None,
    ) -> None:
        self._name = name
        total = window_rate(requests_per_second, window_seconds)
        self._rate = _Window(total)
        self._background = _Window(background_rate(total))
        self._readback = _Window(share_rate(total, READBACK_SHARE))
        rates = [Rate(n, d) for n, d in ((daily_calls, Duration.DAY), (monthly_calls, MONTH)) if n]
        self._budget = _budget_limiter(name, rates, budget_file) if rates else None

    def close(self) -> None:
        """Let go of the limiters: pyrate-limiter leaks each bucket on a thread with its own
        event loop (descriptors held) until the bucket is disposed of; the budget file too."""
        limiters = [self._rate.limiter, self._background.limiter, self._readback.limiter]
        if self._budget is not None:
            limiters.append(self._budget)
        for limiter in limiters:
            for bucket in limiter.buckets():
                limiter.dispose(bucket)
                if isinstance(bucket, SQLiteBucket):
                    bucket.conn.close()

    def acquire(self) -> Verdict:
        """Count one call if both the rate and the budget allow it."""
        wait = self._rate.take(self._name)
        if wait > 0:
            return Verdict(False, wait, REQUEST_RATE)
        if self._budget is not None and not self._budget.try_acquire(self._name):
            return Verdict(False, BUDGET_WAIT_SECONDS, "call budget used up")
        return Verdict(True)

    def acquire_background(self) -> Verdict:
        """acquire, for background work: within its share of the window first."""
        wait = self._background.take(self._name)
        if wait > 0:
            return Verdict(False, wait, REQUEST_RATE)
        return self.acquire()

    def acquire_readback(self) -> Verdict:
        """acquire, for reconciliation's read-back: within its share of the window first."""
        wait = self._readback.take(self._name)
        if wait > 0:
            return Verdict(False, wait, REQUEST_RATE)
        return self.acquire()

    def spend(self, wait: Callable[[float], bool]) -> Verdict:
        """Count one call, waiting out a short wait with wait(seconds) (True: stop asked).

        Not allowed: the wait would be PAUSE_SECONDS or longer (the caller pauses the
        destination instead of holding its worker), or a stop came.
        """
        while True:
            verdict = self.acquire()
            if verdict.allowed or verdict.wait_seconds >= PAUSE_SECONDS:
                return verdict
            if wait(verdict.wait_seconds):
                return Verdict(False, 0.0, "stopping")

    def before_request(self, timeout_seconds: float) -> float:
        """The session's hook before each request: charged if the thread opened a Scope, and
        the timeout it may have (what is left of the scope's deadline).

        Raises DeadlineError (no time left, or the budget not within it), ThrottledError (the
        call budget is used up) or StoppingError. Without a Scope the caller spent already.
        """
        opened: Scope | None = getattr(_LOCAL, "scope", None)
        if opened is None:
            return timeout_seconds
        self._charge(opened)
        if opened.deadline is None:
            return timeout_seconds
        left = opened.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineError(f"{self._name}: no time left for the call", connector=self._name)
        return min(timeout_seconds, left)

    def _charge(self, opened: Scope) -> None:
        while True:
            verdict = self._acquire_for(opened)
            if verdict.allowed:
                return
            if verdict.reason != REQUEST_RATE:
                raise ThrottledError(
                    f"{self._name}: {verdict.reason}",
                    connector=self._name,
                    retry_after_seconds=verdict.wait_seconds,
                )
            if opened.deadline is not None and (
                time.monotonic() + verdict.wait_seconds >= opened.deadline
            ):
                raise DeadlineError(f"{self._name}: no request free in time", connector=self._name)
            if opened.wait(verdict.wait_seconds):
                raise StoppingError("stopping while waiting for the request rate")

    def _acquire_for(self, opened: Scope) -> Verdict:
        if opened.readback:
            return self.acquire_readback()
        return self.acquire_background() if opened.background else self.acquire()


MONTH = Duration.DAY * 30


def window_rate(requests_per_second: float, window_seconds: float) -> Rate:
    """requests_per_second counted over window_seconds: whole calls per window (pyrate-limiter
    counts whole calls; 0.5/s over 1 s is 1 call per 2 s)."""
    calls = math.floor(requests_per_second * window_seconds + 1e-9)
    if calls >= 1:
        return Rate(calls, round(window_seconds * 1000))
    return Rate(1, round(1000 / requests_per_second))


def background_rate(total: Rate) -> Rate:
    """The background share of a window: RESERVE_SHARE fewer calls, over a window
    WINDOW_MARGIN longer."""
    calls = max(1, total.limit - math.ceil(total.limit * RESERVE_SHARE))
    return Rate(calls, math.ceil(total.interval * (1 + WINDOW_MARGIN)))


def share_rate(total: Rate, share: float) -> Rate:
    """share of a window's calls (at least one), over a window WINDOW_MARGIN longer."""
    calls = max(1, math.floor(total.limit * share))
    return Rate(calls, math.ceil(total.interval * (1 + WINDOW_MARGIN)))


class _Window:
    """One sliding window in memory (monotonic clock), and how long until it takes a call."""

    def __init__(self, rate: Rate) -> None:
        self._bucket = InMemoryBucket([rate])
        self.limiter = Limiter(
            self._bucket,
            clock=MonotonicClock(),  # type: ignore[no-untyped-call]
            raise_when_fail=False,
        )

    def take(self, name: str) -> float:
        """0.0: one call counted; else the seconds until the window's oldest call leaves it."""
        if self.limiter.try_acquire(name):
            return 0.0
        waiting = self._bucket.waiting(RateItem(name, int(1000 * time.monotonic())))
        assert isinstance(waiting, int)  # an in-memory bucket answers at once
        return max(1, waiting) / 1000


def _budget_limiter(name: str, rates: list[Rate], budget_file: Path | None) -> Limiter:
    if budget_file is None:
        return Limiter(InMemoryBucket(rates), clock=TimeClock(), raise_when_fail=False)
    table = f"budget_{name}"
    bucket = SQLiteBucket.init_from_file(rates, table=table, db_path=str(budget_file))
    return Limiter(bucket, clock=TimeClock(), raise_when_fail=False)
