"""The worker's side of the window: receipts waiting their turn, bulk runs beside them, landings."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.core import models
from agent.core.errors import StoppingError, StorageError, ThrottledError
from agent.delivery.attempt import Attempts
from agent.delivery.bulk import BulkContacts, Run
from agent.delivery.outcome import needs_probe
from agent.delivery.prepare import member_key, members_named
from agent.delivery.send import NotSentError
from agent.delivery.state import Destination
from agent.delivery.window import Landed, Window
from agent.ledger import Claimed

log = logging.getLogger(__name__)

HELD_PER_SEND = 16  # receipts claimed to wait their turn, at most, per send the window holds
STOP_DRAIN_SECONDS = 35.0  # at stop, how long a send in flight may take to land (> a timeout)


@dataclass
class _Held:
    """A receipt claimed for the window, waiting its turn (prepared once its key is free)."""

    claimed: Claimed
    key: str  # its record key: its revisions go one after the other
    message: models.OutboundMessage | None = None
    needs: set[str] = field(default_factory=set)  # the member keys it names


class Flight:
    """Starts a destination's sends in the window in queue order and applies what lands.

    A send holds ordering keys (its receipt's id, and the member registered at the till that
    it names); one whose key is held waits its turn. Bulk runs go beside the receipts and each
    other; a contact change sent alone waits until no run is in flight. Everything here runs on
    the worker's thread, so each outcome is still decided in one place (Attempts).
    """

    def __init__(
        self,
        window: Window,
        attempts: Attempts,
        destination: Destination,
        stop: threading.Event,
        bulk: BulkContacts | None = None,
    ) -> None:
        self._window = window
        self._attempts = attempts
        self._destination = destination
        self._stop = stop
        self._bulk = bulk
        self._held: list[_Held] = []  # receipts claimed for the window, waiting their turn
        self._runs = 0  # bulk runs of contact changes in flight in the window
        self._reserved = 0  # places kept for a run (or a contact change) waiting for room

    @property
    def busy(self) -> bool:
        """A send is in flight."""
        return len(self._window) > 0

    def may_claim(self) -> bool:
        """Room to claim one more: not too many waiting their turn. The claim runs ahead of a
        full window (its sends waiting for the rate), so the runs of contact changes further on
        start early and the receipts naming their members do not wait at the end of a stretch."""
        return len(self._held) < HELD_PER_SEND * self._window.size

    def hold(self, claimed: Claimed) -> None:
        """A receipt claimed: it waits its turn (start_held starts it)."""
        self._held.append(_Held(claimed, str(claimed.item.get("key"))))

    def start_held(self) -> None:
        """Start the receipts waiting their turn, in the order claimed: each once its
        receipt's earlier revision and the member it names are no longer in flight."""
        if not self._held:
            return
        if self._stop.is_set() or self._destination.paused_now():
            self._release_held()
            return
        waiting: set[str] = set()  # a receipt's later revision waits behind its earlier one
        held_now, self._held = self._held, []
        for position, held in enumerate(held_now):
            if not self._window.has_room(1 + self._reserved):  # a run waiting comes first
                self._held += held_now[position:]
                return
            if held.key in waiting or self._window.holds({held.key}):
                waiting.add(held.key)
                self._held.append(held)
                continue
            try:
                launched = self._launch(held)
            except Exception:
                self._attempts.put_back(held.claimed)
                self._held += held_now[position + 1 :]
                raise
            if not launched:
                self._held.append(held)
                waiting.add(held.key)

    def _launch(self, held: _Held) -> bool:
        """Prepare a receipt (here) and start its send (on the window's thread); False when
        the member it names is in flight still. Settled here when it cannot be prepared."""
        if held.message is None:
            message = self._attempts.prepared(held.claimed)
            if message is None:
                return True  # settled: delivered as it was, or its outcome recorded
            held.message = message
            held.needs = members_named(message)
        if self._window.holds(held.needs):
            return False
        keys = frozenset({held.key, *held.needs})
        send = functools.partial(self._attempts.send.send_unless, held.message, self._held_back)
        self._window.start(held.claimed, keys, held.message, send)
        return True

    def _held_back(self) -> bool:
        return self._stop.is_set() or self._destination.paused_now()

    def _release_held(self) -> None:
        """Every receipt waiting its turn back in its place (a pause, a stop, a run whose
        contacts went back: the order is made again from the queue)."""
        held, self._held = self._held, []
        for waiting in held:
            self._attempts.put_back(waiting.claimed)

    # -- contact changes: runs beside the receipts, a change alone after the runs -----------

    def contacts_turn(self, claimed: Claimed, *others: Claimed) -> bool:
        """A contact change sent alone (or an item that is not a receipt) waits for the bulk
        runs in flight to land, and for room. False: the destination paused or is stopping
        meanwhile (claimed and others released)."""
        return self._turn(lambda: self._runs == 0, 1, [claimed, *others])

    def _turn(self, free: Callable[[], bool], weight: int, claimed: list[Claimed]) -> bool:
        """Wait for landings until free() and room for weight; False (claimed released) if the
        destination paused or is stopping meanwhile."""
        try:
            while not (free() and self._window.has_room(weight)):
                # Free to go but for room: the places that land are kept for it (receipts
                # waiting their turn would take each as it frees, and a run would starve).
                self._reserved = weight if free() else 0
                self.land_next(1.0)
                if self._held_back():
                    for item in claimed:
                        self._attempts.put_back(item)
                    return False
            return True
        finally:
            self._reserved = 0

    def start_run(self, head: Claimed) -> None:
        """Claim a run of contact changes here and send it on the window's thread, beside the
        receipts and other runs; the receipts naming its members, and changes to the same
        contacts in a later run, wait for it to land."""
        assert self._bulk is not None
        run, entries = self._bulk.gather(head)
        if not entries:  # the head alone (and those claimed behind it back in their places)
            if self.contacts_turn(head, *run.untouched):
                self._attempts.apply_run(run)
            return
        bulk, window = self._bulk, self._window
        keys = frozenset({*(member_key(k) for k in bulk.keys(entries)), *bulk.identities(entries)})
        weight = min(window.size, 1 + bulk.settings.lookups_at_once)
        if not self._turn(lambda: not window.holds(keys), weight, [e.claimed for e in entries]):
            return
        window.start(head, keys, run, functools.partial(bulk.send, run, entries), weight)
        self._runs += 1

    # -- landings ---------------------------------------------------------------------------

    def land_all(self) -> None:
        while (landed := self._window.land()) is not None:
            self._apply_landed(landed)
        self.start_held()

    def land_next(self, timeout_seconds: float) -> None:
        landed = self._window.land(timeout_seconds)
        if landed is not None:
            self._apply_landed(landed)
        self.start_held()

    def _apply_landed(self, landed: Landed) -> None:
        """A send from the window has finished: the outcome it would have had alone, except
        that a send held back, or failing into a pause already known, goes back uncharged."""
        claimed, error = landed.claimed, landed.error
        try:
            if isinstance(landed.message, Run):
                self._run_landed(landed.message, error)
            elif error is None:
                self._attempts.succeeded(claimed, landed.message, landed.result)
            elif isinstance(error, StorageError):
                raise error
            elif isinstance(error, NotSentError | StoppingError) or (
                self._destination.paused_now()
                and (needs_probe(error) or isinstance(error, ThrottledError))
            ):
                self._attempts.release(claimed)  # in its place; the pause speaks for it
            else:
                self._attempts.settle(claimed, error)
        except StoppingError:
            self._attempts.put_back(claimed)  # stopping while judging it (the probe): uncharged
        except Exception:
            self._attempts.put_back(claimed)
            raise

    def _run_landed(self, run: Run, error: BaseException | None) -> None:
        """A bulk run has landed: its items' outcomes; if any went back to the queue, the
        receipts waiting (perhaps for those members) go back too, to follow them again."""
        self._runs -= 1
        if error is not None:
            self._release_held()
            raise error  # the head goes back in its place (the rest did in BulkContacts)
        self._attempts.apply_run(run)
        if run.untouched or run.single or run.blamed is not None or run.pause is not None:
            self._release_held()

    def drain(self) -> None:
        """At stop: wait for the sends in flight and apply their outcomes (a delivered item is
        acked, not sent again after the restart); the receipts waiting go back in place."""
        while len(self._window) > 0:
            landed = self._window.land(STOP_DRAIN_SECONDS)
            if landed is None:
                log.warning("sends to %s still in flight at stop", self._destination.name)
                break  # their items are still claimed: back in line at the next start
            try:
                self._apply_landed(landed)
            except Exception:  # stopping: report and go on with the others
                log.exception(
                    "an outcome for %s could not be applied at stop", self._destination.name
                )
        with contextlib.suppress(Exception):
            self._release_held()
