"""Thread-safe component states, written by workers and read by the API."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

OK = "ok"
DEGRADED = "degraded"
FAILING = "failing"
_RANK = {OK: 0, DEGRADED: 1, FAILING: 2}


@dataclass(frozen=True)
class ComponentState:
    name: str
    state: str
    detail: str
    since: float


class Health:
    """The latest state of each component (storage, each destination, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, ComponentState] = {}

    def report(self, name: str, state: str, detail: str = "") -> None:
        """Record a component's state; `since` changes only when the state does."""
        if state not in _RANK:
            raise ValueError(f"unknown health state {state!r}")
        with self._lock:
            previous = self._states.get(name)
            since = previous.since if previous and previous.state == state else time.time()
            self._states[name] = ComponentState(name, state, detail, since)

    def get(self, name: str) -> ComponentState | None:
        with self._lock:
            return self._states.get(name)

    def snapshot(self) -> tuple[ComponentState, ...]:
        with self._lock:
            return tuple(sorted(self._states.values(), key=lambda s: s.name))

    def overall(self) -> str:
        """The worst state of any component; ok when nothing was reported."""
        states = self.snapshot()
        return max((s.state for s in states), key=_RANK.__getitem__, default=OK)
