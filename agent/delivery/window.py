"""A bounded window of one destination's sends in flight: started in order, landing in any."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.ledger import Claimed


@dataclass(frozen=True)
class Landed:
    """A send that has finished: its item, what went out, and the answer or the error."""

    claimed: Claimed
    message: Any
    result: object = None
    error: BaseException | None = None


class Window:
    """At most `size` requests at once, each send on its own thread, holding its ordering keys.

    The caller (the destination's worker) starts sends and applies what lands, both on its
    own thread, so the outcome of every item is still decided in one place. A key (a receipt's
    id, a member's, a contact's identity) is held by one send at most, so what shares a key
    goes one after the other, in the order started. A send that makes several requests at once
    (a bulk run's lookups) takes that many places (its weight).
    """

    def __init__(
        self, name: str, size: int, begun: Callable[[], Callable[[], None]] | None = None
    ) -> None:
        """begun: called as each send starts; what it returns, as the send ends (the watchdog's
        heartbeat: a send stuck on its thread makes it stale, agent/core/notify.py)."""
        self.size = size
        self._begun = begun or (lambda: lambda: None)
        self._name = name
        self._landed: queue.Queue[Landed] = queue.Queue()
        self._keys: dict[tuple[str, int], frozenset[str]] = {}  # (queue, id) -> its keys
        self._holding: Counter[str] = Counter()  # every key some send in flight holds
        self._weights: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._started = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def has_room(self, weight: int = 1) -> bool:
        with self._lock:
            return sum(self._weights.values()) + weight <= self.size

    def holds(self, keys: Iterable[str]) -> bool:
        """A send holding one of these keys is in flight (the next must wait for it to land)."""
        with self._lock:
            return any(key in self._holding for key in keys)

    def start(
        self,
        claimed: Claimed,
        keys: frozenset[str],
        message: object,
        send: Callable[[], object],
        weight: int = 1,
    ) -> None:
        """Run send() on a thread of its own; what it returns or raises lands here."""
        ticket = (claimed.lane_queue, claimed.id)
        with self._lock:
            full = sum(self._weights.values()) + weight > self.size
            if full or any(key in self._holding for key in keys):
                raise RuntimeError("the window has no room for this send")  # a caller's bug
            self._keys[ticket] = keys
            self._weights[ticket] = weight
            self._holding.update(keys)
            self._started += 1
            number = self._started

        ended = self._begun()

        def run() -> None:
            try:
                landed = Landed(claimed, message, result=send())
            except BaseException as exc:  # every outcome lands, to be judged by the worker
                landed = Landed(claimed, message, error=exc)
            finally:
                ended()
            self._landed.put(landed)

        name = f"send-{self._name}-{number}"
        threading.Thread(target=run, name=name, daemon=True).start()

    def land(self, timeout_seconds: float = 0.0) -> Landed | None:
        """The next finished send (waiting up to timeout_seconds), or None."""
        try:
            landed = (
                self._landed.get(timeout=timeout_seconds)
                if timeout_seconds > 0
                else self._landed.get_nowait()
            )
        except queue.Empty:
            return None
        with self._lock:
            ticket = (landed.claimed.lane_queue, landed.claimed.id)
            keys = self._keys.pop(ticket, frozenset())
            self._weights.pop(ticket, None)
            for key in keys:
                self._holding[key] -= 1
                if self._holding[key] <= 0:
                    del self._holding[key]
        return landed
