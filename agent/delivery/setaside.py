"""A destination's set-aside items: when each is due back in line, and a technician's word on it."""

from __future__ import annotations

import logging
import threading
from typing import Any

from agent.core.errors import NotFoundError
from agent.delivery.state import Destination, SetAsideItem, Ticket
from agent.ledger import Claimed, Ledger, Outbox

log = logging.getLogger(__name__)

BY_HAND = "dead-lettered by a technician (till-agent set-aside dead-letter)"


class SetAside:
    """One destination's set-aside items (persist-queue's ack_failed status).

    An item set aside waits its own back-off while the items behind it flow; when due it goes
    back in its place. A technician's release or dead-letter may come from any thread; the
    worker applies it at its next pass.
    """

    def __init__(
        self, destination: Destination, outbox: Outbox, ledger: Ledger, wake: threading.Event
    ) -> None:
        self._destination = destination
        self._outbox = outbox
        self._ledger = ledger
        self._wake = wake  # cut the worker's wait short
        self._items = destination.state.set_aside  # (its count is in the status answer)
        self._asked: list[tuple[str, Ticket]] = []
        self._asked_lock = threading.Lock()
        self._has_asked = threading.Event()
        self._condemned: set[Ticket] = set()

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, claimed: Claimed, delay: float) -> None:
        """Set the item aside for delay seconds; the next one goes now."""
        ticket = (claimed.lane_queue, claimed.id)
        self._outbox.set_aside(claimed)
        self._items[ticket] = SetAsideItem(ticket, self._destination.monotonic() + delay)

    def forget(self, claimed: Claimed) -> None:
        """The item has left the queue (dead-lettered)."""
        self._items.pop((claimed.lane_queue, claimed.id), None)

    def bring_back_due(self) -> None:
        """Every item whose back-off is over goes back in its place."""
        now = self._destination.monotonic()
        for ticket, item in list(self._items.items()):
            if item.due <= now:
                self._items.pop(ticket, None)
                self._outbox.bring_back(*ticket)

    def restore(self) -> None:
        """After a restart, items set aside before go back in line (their counts are kept)."""
        for queue, queue_id, _ in self._outbox.set_aside_items(self._destination.name):
            self._outbox.bring_back(queue, queue_id)

    def all_due(self) -> None:
        """retry-now: every item set aside is due at once."""
        now = self._destination.monotonic()
        for item in self._items.values():
            item.due = now

    # -- a technician's word (any thread asks; the worker applies) --------------------------

    def listed(self, limit: int = -1) -> list[dict[str, Any]]:
        """This destination's set-aside items with why, oldest first (any thread)."""
        name = self._destination.name
        return [
            {
                "id": f"{queue}:{queue_id}",
                "destination": name,
                "kind": str(item.get("kind", "")),
                "record_key": str(item.get("key", "")),
                "revision": int(item.get("revision") or 0),
                **self._ledger.failing(name, item),
            }
            for queue, queue_id, item in self._outbox.set_aside_items(name, limit)
        ]

    def ask(self, action: str, ticket: Ticket) -> None:
        """release (try it now) or dead_letter a set-aside item; NotFoundError if it is not
        set aside here. The worker applies it at its next pass."""
        listed = self._outbox.set_aside_items(self._destination.name)
        if ticket not in {(q, i) for q, i, _ in listed}:
            raise NotFoundError(f"no set-aside item {ticket[0]}:{ticket[1]}")
        with self._asked_lock:
            self._asked.append((action, ticket))
        self._has_asked.set()
        self._wake.set()

    def apply_asked(self) -> None:
        """A technician's release (due now) or dead-letter (back in line, then dead-lettered
        when claimed: at once, it keeps its place at the front) of set-aside items."""
        if not self._has_asked.is_set():
            return
        self._has_asked.clear()
        with self._asked_lock:
            asked, self._asked = self._asked, []
        for action, ticket in asked:
            if action == "dead_letter":
                self._condemned.add(ticket)
            self._items.pop(ticket, None)
            self._outbox.bring_back(*ticket)
            log.info("%s of a set-aside item of %s", action, self._destination.name)

    def condemned(self, claimed: Claimed) -> bool:
        """A technician asked for this item to be dead-lettered (asked once: True once)."""
        ticket = (claimed.lane_queue, claimed.id)
        if ticket not in self._condemned:
            return False
        self._condemned.discard(ticket)
        return True
