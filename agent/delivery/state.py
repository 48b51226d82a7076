"""What a destination is doing (online, offline, throttled, halted) and how long it pauses."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.core import health

ONLINE, OFFLINE, THROTTLED, HALTED = "online", "offline", "throttled", "halted"
HEALTH_FOR = {
    ONLINE: health.OK,
    OFFLINE: health.DEGRADED,
    THROTTLED: health.DEGRADED,
    HALTED: health.FAILING,
}

Ticket = tuple[str, int]  # (queue, id): ids are per queue, and a destination has two lanes


@dataclass
class SetAsideItem:
    """An item set aside (persist-queue's ack_failed), and when it is due again."""

    ticket: Ticket
    due: float  # monotonic


@dataclass
class DestinationState:
    """What a destination is doing, for /v1/status: written by its worker only."""

    state: str = ONLINE
    detail: str = "no send yet"
    last_success_at: float | None = None  # wall clock, for display
    consecutive_failures: int = 0
    paused_until: float = 0.0  # monotonic
    sent: int = 0
    failed: int = 0
    set_aside: dict[Ticket, SetAsideItem] = field(default_factory=dict)


class Destination:
    """One destination's state and pause as its worker writes them; /v1/status reads copies."""

    def __init__(
        self, name: str, board: health.Health, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.state = DestinationState()
        self.monotonic = monotonic
        self.next_probe_at = 0.0  # monotonic: during an outage, when to ask the probe again
        self._health = board
        self._progress_at = monotonic()  # the last send that worked, or the last empty queue

    def report(self, state: str, detail: str) -> None:
        self.state.state, self.state.detail = state, detail
        self._health.report(f"destination:{self.name}", HEALTH_FOR[state], detail)

    def pause(self, seconds: float) -> None:
        """Pause for seconds at least (a pause already longer stands: sends land in any order)."""
        until = self.monotonic() + max(0.0, seconds)
        self.state.paused_until = max(self.state.paused_until, until)

    def paused_now(self) -> bool:
        return self.state.paused_until > self.monotonic()

    def delivered(self) -> None:
        """One more delivered: the failures in a row end, and the destination made progress."""
        st = self.state
        st.sent, st.consecutive_failures, st.last_success_at = st.sent + 1, 0, time.time()
        self.progressed()

    def progressed(self) -> None:
        """A send worked, or nothing waits: not stalled."""
        self._progress_at = self.monotonic()

    def stalled_seconds(self) -> float:
        """How long items have waited without one delivered (monotonic: clock jumps don't count)."""
        return max(0.0, self.monotonic() - self._progress_at)

    def snapshot(self) -> dict[str, object]:
        """This destination's state for /v1/status (read from another thread: copies only)."""
        st = self.state
        return {
            "state": st.state,
            "detail": st.detail,
            "lastSuccessAt": st.last_success_at,
            "sent": st.sent,
            "failed": st.failed,
            "setAside": len(st.set_aside),
            "pausedSeconds": round(max(0.0, st.paused_until - self.monotonic()), 1),
        }
