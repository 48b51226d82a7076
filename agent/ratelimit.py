"""Per-destination request rate and call budgets (pyrate-limiter), never exceeded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyrate_limiter import Duration, Limiter, Rate
from pyrate_limiter.buckets.in_memory_bucket import InMemoryBucket
from pyrate_limiter.buckets.sqlite_bucket import SQLiteBucket
from pyrate_limiter.clocks import MonotonicClock, TimeClock

log = logging.getLogger(__name__)

BUDGET_WAIT_SECONDS = 60.0
PAUSE_SECONDS = 5.0  # a wait this long or longer pauses the destination instead


@dataclass(frozen=True)
class Verdict:
    """May a call go now? If not, how long to wait and why."""

    allowed: bool
    wait_seconds: float = 0.0
    reason: str = ""


class RateBudget:
    """A request rate (in memory, monotonic clock) and optional daily/monthly budgets (on disk).

    The budgets live in a SQLite file so a restart does not hand out a fresh day's calls.
    """

    def __init__(
        self,
        name: str,
        *,
        requests_per_second: float,
        daily_calls: int = 0,
        monthly_calls: int = 0,
        budget_file: Path | None = None,
    ) -> None:
        self._name = name
        self._interval = 1.0 / requests_per_second
        self._rate = Limiter(
            InMemoryBucket([per_second(requests_per_second)]),
            clock=MonotonicClock(),  # type: ignore[no-untyped-call]
            raise_when_fail=False,
        )
        rates = [Rate(n, d) for n, d in ((daily_calls, Duration.DAY), (monthly_calls, MONTH)) if n]
        self._budget = _budget_limiter(name, rates, budget_file) if rates else None

    def acquire(self) -> Verdict:
        """Count one call if both the rate and the budget allow it."""
        if not self._rate.try_acquire(self._name):
            return Verdict(False, self._interval, "request rate")
        if self._budget is not None and not self._budget.try_acquire(self._name):
            return Verdict(False, BUDGET_WAIT_SECONDS, "call budget used up")
        return Verdict(True)

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


MONTH = Duration.DAY * 30


def per_second(requests_per_second: float) -> Rate:
    """pyrate-limiter counts whole calls per interval: 0.5/s is 1 call per 2 s."""
    if requests_per_second >= 1:
        return Rate(round(requests_per_second), Duration.SECOND)
    return Rate(1, round(1000 / requests_per_second))


def _budget_limiter(name: str, rates: list[Rate], budget_file: Path | None) -> Limiter:
    if budget_file is None:
        return Limiter(InMemoryBucket(rates), clock=TimeClock(), raise_when_fail=False)
    table = f"budget_{name}"
    bucket = SQLiteBucket.init_from_file(rates, table=table, db_path=str(budget_file))
    return Limiter(bucket, clock=TimeClock(), raise_when_fail=False)
