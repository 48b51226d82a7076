"""One send loop per destination: it wires claim, prepare, budget, send, decide and record."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.core import health
from agent.core.config import DeliverySettings
from agent.core.errors import StoppingError, new_error_id
from agent.core.metrics import Metrics
from agent.core.ratelimit import RateBudget
from agent.delivery.attempt import Attempts
from agent.delivery.budget import Budget
from agent.delivery.bulk import BulkContacts
from agent.delivery.flight import Flight
from agent.delivery.history import FailingItems
from agent.delivery.prepare import ContactResolver, Preparer
from agent.delivery.record import Recorder
from agent.delivery.send import Send, Sender
from agent.delivery.setaside import BY_HAND, SetAside
from agent.delivery.state import OFFLINE, ONLINE, Destination, Ticket
from agent.delivery.window import Window
from agent.ledger import Claimed, Failure, Ledger, Outbox

__all__ = ["ContactResolver", "Dispatcher", "Sender", "watch_backlog"]

log = logging.getLogger(__name__)


class Dispatcher:
    """Delivers one destination's queue in order; one destination never holds another back.

    The worker loop only wires the stages: it claims the next item (the set-aside items due
    back in line first), and hands it to Attempts (prepare → budget → send → decide → record),
    or, with several sends in flight, to Flight, which starts it in the window and applies what
    lands. Between passes it waits out the destination's pause, probing during an outage.
    """

    def __init__(
        self,
        destination: str,
        sender: Sender,
        outbox: Outbox,
        ledger: Ledger,
        board: health.Health,
        settings: DeliverySettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Callable[[threading.Event, float], bool] = threading.Event.wait,
        claim_wait_seconds: float = 0.5,
        rng: random.Random | None = None,
        budget: RateBudget | None = None,
        amends: str = "replace",
        resolver: ContactResolver | None = None,
        metrics: Metrics | None = None,
        heartbeat: Callable[[], None] | None = None,
        bulk: BulkContacts | None = None,
        in_flight: int = 1,
        begun: Callable[[], Callable[[], None]] | None = None,
    ) -> None:
        self.destination = destination
        self._heartbeat = heartbeat or (lambda: None)  # each loop pass: the watchdog's proof
        self._outbox = outbox
        self._settings = settings
        self._wait = wait  # pauses and back-off, on the same clock as monotonic
        self._claim_wait_seconds = claim_wait_seconds  # real time: a new item wakes it
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop or retry-now: cut a wait short
        self._hurry = threading.Event()  # retry-now: skip the back-off, set-aside items due
        self._destination = Destination(destination, board, monotonic)
        self.state = self._destination.state
        self._set_aside = SetAside(self._destination, outbox, ledger, self._wake)
        failing = FailingItems(self._destination, ledger)
        spend = Budget(destination, budget, self._stop, spaced=in_flight > 1)
        prepare = Preparer(destination, ledger, spend, amends=amends, resolver=resolver)
        record = Recorder(
            self._destination,
            outbox,
            ledger,
            settings,
            self._set_aside,
            failing,
            append_only=amends == "difference",
            metrics=metrics,
            rng=rng,
            bulk=bulk,
        )
        send = Send(sender, spend, prepare)
        self._attempts = Attempts(
            self._destination,
            outbox,
            ledger,
            settings,
            prepare=prepare,
            send=send,
            failing=failing,
            record=record,
            bulk=bulk,
        )
        self._bulk = bulk  # contact changes in bulk calls (agent/delivery/bulk.py)
        # Receipts several at once (delivery.in_flight, agent/delivery/window.py); 1: one by one.
        # Each send in flight holds the heartbeat while it runs (begun): a stuck one stales it.
        self._flight = (
            Flight(
                Window(destination, in_flight, begun),
                self._attempts,
                self._destination,
                self._stop,
                bulk,
            )
            if in_flight > 1
            else None
        )
        if bulk is not None:
            bulk.wait = self._stop.wait
        self._thread = threading.Thread(target=self._loop, name=f"dispatch-{destination}")

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._set_aside.restore()
        self._destination.report(ONLINE, "started")
        self._thread.start()

    def stop(self, timeout_seconds: float) -> None:
        """Stop after the sends in flight (each item acked or released, never dropped)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_seconds)

    def retry_now(self) -> None:
        """Skip the back-off: the next pass tries at once, set-aside items included (any
        thread may call this; the worker applies it)."""
        self._hurry.set()
        self._wake.set()

    def set_aside(self, limit: int = -1) -> list[dict[str, Any]]:
        """This destination's set-aside items with why, oldest first (any thread)."""
        return self._set_aside.listed(limit)

    def ask(self, action: str, ticket: Ticket) -> None:
        """release (try it now) or dead_letter a set-aside item; NotFoundError if it is not
        set aside here. The worker applies it at its next pass."""
        self._set_aside.ask(action, ticket)

    @property
    def alive(self) -> bool:
        """The worker thread runs (False before start and after stop or a fatal error)."""
        return self._thread.is_alive()

    def stalled_seconds(self) -> float:
        """How long items have waited without one delivered (monotonic: clock jumps don't count)."""
        return self._destination.stalled_seconds()

    def snapshot(self) -> dict[str, object]:
        """This destination's state for /v1/status (read from another thread: copies only)."""
        return self._destination.snapshot()

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._heartbeat()
            try:
                self.step(claim_timeout_seconds=self._claim_wait_seconds)
            except Exception:  # a worker loop's top: report, wait, go on
                log.exception("dispatch to %s failed", self.destination)
                self._destination.report(OFFLINE, "internal error; see the log")
                self._wait(self._stop, 1.0)
        if self._flight is not None:
            self._flight.drain()

    def step(self, claim_timeout_seconds: float = 0.0) -> bool:
        """One pass: wait out a pause, release what is due, deliver one item. True if it sent."""
        if self._hurry.is_set():
            self._hurry_up()
        self._set_aside.apply_asked()
        flight = self._flight
        if flight is not None:
            flight.land_all()
        if self._paused():
            return False
        self._attempts.release_stranded()
        self._set_aside.bring_back_due()
        claimed = self._claim(claim_timeout_seconds)
        if claimed is None:
            return False
        try:
            self._handle(claimed)
        except StoppingError:
            self._outbox.release(claimed)  # stopping mid-send: back in its place, uncharged
            return False
        except Exception:
            self._attempts.put_back(claimed)  # the store failed or we are stopping
            raise
        if flight is not None:
            flight.start_held()
        return True

    def _claim(self, timeout_seconds: float) -> Claimed | None:
        """The next item in the queue; None when there is none (with sends in flight: after
        waiting for one to land instead)."""
        flight = self._flight
        busy = flight is not None and flight.busy
        if flight is not None and busy and not flight.may_claim():
            flight.land_next(timeout_seconds)  # enough wait their turn: wait for a send
            return None
        claimed = self._outbox.claim(
            self.destination, timeout_seconds=0.0 if busy else timeout_seconds
        )
        if claimed is None:
            if flight is not None and busy:
                flight.land_next(timeout_seconds)  # nothing new: wait for a send
            elif not self._set_aside:
                self._destination.progressed()  # nothing waits: not stalled
        return claimed

    def _handle(self, claimed: Claimed) -> None:
        """A technician's dead-letter order, a run of contact changes, or one item's send."""
        flight = self._flight
        if self._set_aside.condemned(claimed):
            self._attempts.record.dead_letter(claimed, Failure(BY_HAND, new_error_id()))
        elif flight is not None and claimed.item.get("kind") == "receipt":
            flight.hold(claimed)  # step starts it
        elif self._bulk is not None and self._bulk.takes(claimed):
            if flight is not None:
                flight.start_run(claimed)
            else:
                self._attempts.deliver_run(claimed)
        elif flight is None or flight.contacts_turn(claimed):
            self._attempts.deliver(claimed)  # (else the destination paused: back in its place)

    # -- the destination's pause -----------------------------------------------------------

    def _paused(self) -> bool:
        """Wait (a second at most) while the destination is paused; during an outage, ask the
        probe every recovery_probe_seconds, so a recovered cloud is used again within that."""
        here = self._destination
        now = here.monotonic()
        wait = here.state.paused_until - now
        if wait <= 0:
            return False
        offline = here.state.state == OFFLINE
        if offline and now >= here.next_probe_at:
            self._recovery_probe()
            return True
        until_probe = here.next_probe_at - now if offline else 1.0
        self._wait(self._wake, min(wait, 1.0, until_probe))  # on the timebase's clock
        self._wake.clear()
        return True

    def _recovery_probe(self) -> None:
        here = self._destination
        here.next_probe_at = here.monotonic() + self._settings.recovery_probe_seconds
        if self._attempts.send.reachable():
            here.state.paused_until = 0.0
            here.state.consecutive_failures = 0
            here.report(ONLINE, "the cloud answers again")

    def _hurry_up(self) -> None:
        """retry-now: no pause, every set-aside item due, the probe asked at the next need."""
        self._hurry.clear()
        self._destination.state.paused_until = 0.0
        self._destination.next_probe_at = 0.0
        self._set_aside.all_due()
        log.info("retry-now for %s", self.destination)


def watch_backlog(dispatchers: Sequence[Dispatcher], board: health.Health, alarm: float) -> None:
    """Health turns red for a destination whose worker stopped, or that has delivered nothing
    for `alarm` seconds while items wait (an outage that long, a halt, a stuck worker)."""
    for worker in dispatchers:
        name = f"backlog:{worker.destination}"
        stalled = worker.stalled_seconds()
        if not worker.alive:
            board.report(name, health.FAILING, "its delivery worker has stopped")
        elif stalled >= alarm:
            minutes = int(stalled // 60)
            board.report(name, health.FAILING, f"nothing delivered for {minutes} min; items wait")
        else:
            board.report(name, health.OK, "moving")
