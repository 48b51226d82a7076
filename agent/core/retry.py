"""The backoff policy: capped exponential delays with jitter, a pure function of the attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_EXPONENT = 64  # 2 ** 64 seconds is past any cap; a float overflows past 2 ** 1023


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n+1: initial * multiplier^n, capped, +- jitter (a fraction)."""

    initial_seconds: float = 1.0
    max_seconds: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after the attempt-th failure in a row (attempt >= 1)."""
        # Capped before the power: after ~1,000 failures in a row (three days offline at the
        # 300 s cap) multiplier ** exponent would overflow a float and break the worker.
        exponent = min(max(0, attempt - 1), MAX_EXPONENT)
        base = min(self.max_seconds, self.initial_seconds * self.multiplier**exponent)
        spread = base * self.jitter
        return max(0.0, min(self.max_seconds, base + rng.uniform(-spread, spread)))
