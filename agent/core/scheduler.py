"""Timed jobs (the `schedule` library) on one thread; a job that raises is logged and kept."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import schedule

from agent.core.health import DEGRADED, OK, Health

log = logging.getLogger(__name__)

# The wall clock going back this far means it was set back: every job is rescheduled from
# the new time, or `schedule` would wait for the old next-run time to come round again.
CLOCK_BACK_SECONDS = 60.0


@dataclass(frozen=True)
class Job:
    name: str
    every_seconds: int
    run: Callable[[], object]
    at_start: bool = False  # also once on the scheduler's first tick, not only after a period


class Scheduler:
    """Runs each job every so often; a failure is reported on the health board, never fatal."""

    def __init__(
        self,
        jobs: list[Job],
        health: Health,
        *,
        clock: Callable[[], dt.datetime] = dt.datetime.now,
        tick_seconds: float = 1.0,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self._heartbeat = heartbeat or (lambda: None)  # each tick: the watchdog's proof
        self._jobs = jobs
        self._health = health
        self._clock = clock
        self._tick_seconds = tick_seconds
        self._schedule = schedule.Scheduler()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._last_tick = clock()
        self._register()

    def _register(self) -> None:
        self._schedule.clear()
        for job in self._jobs:
            self._schedule.every(job.every_seconds).seconds.do(self._guarded, job)

    def _guarded(self, job: Job) -> None:
        """Run one job; whatever it raises is logged and reported, and it stays scheduled."""
        try:
            job.run()
        except Exception as exc:  # a worker loop's top: report, keep the job
            log.exception("job %s failed", job.name)
            self._health.report(f"job:{job.name}", DEGRADED, f"last run failed: {exc}")
        else:
            self._health.report(f"job:{job.name}", OK, "last run succeeded")

    def tick(self) -> None:
        """One pass: run what is due (each missed run once, not once per missed tick)."""
        now = self._clock()
        if (self._last_tick - now).total_seconds() > CLOCK_BACK_SECONDS:
            log.warning("wall clock went back; rescheduling every job from now")
            self._register()
        self._last_tick = now
        self._schedule.run_pending()

    def run_now(self, name: str) -> None:
        """Run one job at once (guarded like a timed run)."""
        job = next(j for j in self._jobs if j.name == name)
        self._guarded(job)

    def _loop(self) -> None:
        for job in self._jobs:
            if job.at_start and not self._stop.wait(self._tick_seconds):
                self._guarded(job)
        while not self._stop.wait(self._tick_seconds):
            self._heartbeat()
            self.tick()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_seconds: float) -> None:
        self._stop.set()
        self._thread.join(timeout_seconds)
