"""Where the delivery workers read the monotonic clock and wait: the machine's, or a test's."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timebase:
    """monotonic() for deadlines; wait(stop, seconds) sleeps until then or until stop is set;
    claim_wait_seconds: how long, in real time, an idle worker waits for a new item (a sale
    wakes it at once) before it looks at its clock again.

    A till runs on REAL. A test of a long outage (tests/test_outage_72h.py) gives the app a
    simulated one, so the app's own workers live through 72 hours in a minute or two.
    """

    monotonic: Callable[[], float] = time.monotonic
    wait: Callable[[threading.Event, float], bool] = threading.Event.wait
    claim_wait_seconds: float = 0.5


REAL = Timebase()
