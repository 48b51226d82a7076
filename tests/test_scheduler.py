"""The scheduler: a failing job stays scheduled and is reported; a clock set back reschedules."""

from __future__ import annotations

import datetime as dt

from agent.core.health import Health
from agent.core.scheduler import Job, Scheduler


class FakeClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 23, 12, 0, 0)

    def __call__(self) -> dt.datetime:
        return self.now


def test_a_job_that_raises_is_reported_and_runs_again():
    runs = []

    def flaky():
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("disk hiccup")

    health = Health()
    scheduler = Scheduler([Job("purge", 1, flaky)], health)
    scheduler.run_now("purge")
    state = health.get("job:purge")
    assert state is not None
    assert state.state == "degraded"
    scheduler.run_now("purge")
    assert len(runs) == 2
    state = health.get("job:purge")
    assert state is not None
    assert state.state == "ok"


def test_a_clock_set_back_reschedules_instead_of_stalling():
    clock = FakeClock()
    scheduler = Scheduler([Job("purge", 3600, lambda: None)], Health(), clock=clock)
    (job,) = scheduler._schedule.jobs
    # What a wall clock set back by a day does to `schedule`: the next run is a day away.
    job.next_run = dt.datetime.now() + dt.timedelta(days=1, hours=1)
    clock.now -= dt.timedelta(days=1)
    scheduler.tick()
    (job,) = scheduler._schedule.jobs
    assert job.next_run is not None
    assert job.next_run <= dt.datetime.now() + dt.timedelta(seconds=3601)


def test_a_small_clock_wobble_changes_nothing():
    clock = FakeClock()
    scheduler = Scheduler([Job("purge", 3600, lambda: None)], Health(), clock=clock)
    (job,) = scheduler._schedule.jobs
    planned = job.next_run
    clock.now -= dt.timedelta(seconds=5)
    scheduler.tick()
    assert scheduler._schedule.jobs[0].next_run == planned


def test_a_job_marked_at_start_runs_once_soon_after_start_then_on_its_period():
    import threading

    ran = threading.Event()
    later: list[int] = []
    scheduler = Scheduler(
        [
            Job("contacts-sync", 3600, ran.set, at_start=True),
            Job("purge", 3600, lambda: later.append(1)),
        ],
        Health(),
        tick_seconds=0.01,
    )
    scheduler.start()
    try:
        assert ran.wait(5.0)  # not an hour later
    finally:
        scheduler.stop(5.0)
    assert later == []  # a job not marked waits for its period
