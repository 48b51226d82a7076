"""How often and how long an item has failed here: the item history the outcome table reads."""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.delivery.outcome import ItemHistory
from agent.delivery.state import Destination
from agent.ledger import Ledger, QueueItem


@dataclass
class _Failing:
    """An item failing in this process: its age then, and when (and after how many sends)."""

    wall_age_seconds: float  # how long it had failed before (the ledger's wall-clock start)
    since: float  # monotonic, when this process first charged it
    sent_then: int  # the destination's deliveries at that moment
    charged: int = 0  # attempts charged in this process (for an item the ledger cannot name)


class FailingItems:
    """The items of one destination failing in this process, by (key, revision).

    The age is the ledger's wall-clock start read once, then the monotonic clock: a wall
    clock stepped while the agent runs (NTP, an RTC reset) neither ages nor rejuvenates a
    failing item, so a jump never dead-letters a whole queue at once (R9).
    """

    def __init__(self, destination: Destination, ledger: Ledger) -> None:
        self._destination = destination
        self._ledger = ledger
        self._failing: dict[tuple[str, int], _Failing] = {}

    def history(self, item: QueueItem) -> ItemHistory:
        """Its charged attempts, how long it has failed, whether another item got through since."""
        attempts = self._ledger.attempts(self._destination.name, item)
        seen = self._failing.get(_ident(item))
        if seen is None:
            return ItemHistory(attempts=attempts)
        attempts = max(attempts, seen.charged)
        hours = (seen.wall_age_seconds + self._destination.monotonic() - seen.since) / 3600
        others_delivered = self._destination.state.sent > seen.sent_then
        return ItemHistory(attempts, hours, others_delivered=others_delivered)

    def charge(self, item: QueueItem, attempts: int) -> None:
        """The item failed on its own: attempts charged so far; its age runs from the first."""
        ident = _ident(item)
        if ident not in self._failing:
            first = self._ledger.first_failed_at(self._destination.name, item)
            wall_age = 0.0 if first is None else max(0.0, time.time() - first)
            sent = self._destination.state.sent
            self._failing[ident] = _Failing(wall_age, self._destination.monotonic(), sent)
        self._failing[ident].charged = attempts

    def done(self, item: QueueItem) -> None:
        """Delivered or dead-lettered: no longer failing."""
        self._failing.pop(_ident(item), None)


def _ident(item: QueueItem) -> tuple[str, int]:
    return item.key, item.revision
