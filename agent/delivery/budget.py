"""Keeps a destination's requests within its rate budget and the rate-limit headers it answers."""

from __future__ import annotations

import threading

from agent.core.errors import ThrottledError
from agent.core.ratelimit import RateBudget, Verdict


class Budget:
    """One destination's rate budget, spent before every request dispatch makes."""

    def __init__(
        self, destination: str, budget: RateBudget | None, stop: threading.Event, *, spaced: bool
    ) -> None:
        """spaced: beside a window of sends in flight, each send's place in an evenly spaced
        line (agent/core/ratelimit.py)."""
        self._destination = destination
        self._budget = budget
        self._stop = stop
        self._spaced = spaced

    def spend(self) -> None:
        """One request within the budget: wait a short while, or raise ThrottledError (the
        item goes back in its place and the destination pauses) when the wait is long."""
        budget = self._budget
        verdict = (
            Verdict(True) if budget is None else budget.spend(self._stop.wait, spaced=self._spaced)
        )
        if not verdict.allowed:
            raise ThrottledError(
                verdict.reason,
                connector=self._destination,
                retry_after_seconds=verdict.wait_seconds,
            )


def wait_asked(result: object) -> float | None:
    """X-RateLimit-Remaining 0: the seconds to wait for the window to reset before the next
    call (1 s when the answer does not say); None when the answer asks for no wait."""
    remaining = getattr(result, "rate_limit_remaining", None)
    if not isinstance(remaining, int) or remaining > 0:
        return None
    reset = getattr(result, "rate_limit_reset_seconds", None)
    return float(reset) if isinstance(reset, int | float) else 1.0
