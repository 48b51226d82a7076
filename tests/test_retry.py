"""The backoff policy."""

from __future__ import annotations

import random

from agent.core.retry import Backoff


def test_delays_grow_exponentially_up_to_the_cap():
    policy = Backoff(initial_seconds=1, max_seconds=30, multiplier=2, jitter=0)
    rng = random.Random(1)
    assert [policy.delay(n, rng) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_jitter_spreads_tills_apart_within_its_fraction():
    policy = Backoff(initial_seconds=10, max_seconds=100, jitter=0.2)
    delays = {round(policy.delay(1, random.Random(seed)), 3) for seed in range(50)}
    assert len(delays) > 40
    assert all(8 <= d <= 12 for d in delays)


def test_zero_initial_means_no_wait_for_tests():
    assert Backoff(initial_seconds=0).delay(5, random.Random(0)) == 0


def test_a_very_long_outage_stays_at_the_cap_and_never_overflows():
    """Regression: 1,025 failures in a row (about three days at 300 s) raised OverflowError."""
    policy = Backoff(initial_seconds=1, max_seconds=300, jitter=0)
    rng = random.Random(0)
    assert [policy.delay(n, rng) for n in (1024, 1025, 5000, 10**9)] == [300] * 4
