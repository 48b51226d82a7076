"""One send loop per destination: claim, send, then ack, retry, set aside or dead-letter."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from agent.core import figures, health, models
from agent.core.config import DeliverySettings
from agent.core.errors import (
    AuthError,
    CloudError,
    ConfigError,
    NotFoundError,
    RejectedError,
    StoppingError,
    StorageError,
    ThrottledError,
    UnsendableError,
    new_error_id,
)
from agent.core.failpoints import failpoint
from agent.core.logs import redact
from agent.core.metrics import Metrics
from agent.core.ratelimit import RateBudget
from agent.core.ratelimit import Verdict as Budget
from agent.core.reasons import reason_in_words
from agent.core.retry import Backoff
from agent.delivery import amend
from agent.delivery.bulk import BulkContacts, Run
from agent.delivery.outcome import DestinationState as Signals
from agent.delivery.outcome import ItemHistory, Outcome, Verdict, decide, needs_probe
from agent.delivery.window import Landed, Window
from agent.ledger import UNDECODABLE, Claimed, Failure, Ledger, Outbox

log = logging.getLogger(__name__)

ONLINE, OFFLINE, THROTTLED, HALTED = "online", "offline", "throttled", "halted"
MULTIPLE_MATCHES = 409
HEALTH_FOR = {
    ONLINE: health.OK,
    OFFLINE: health.DEGRADED,
    THROTTLED: health.DEGRADED,
    HALTED: health.FAILING,
}


class Sender(Protocol):
    """What dispatch needs of a connector (agent/connectors/base.py defines the full contract)."""

    name: str

    def send(self, message: models.OutboundMessage) -> object: ...

    def probe(self) -> None: ...


class ContactResolver(Protocol):
    """A cloud that keeps contacts and finds one by a secondary key (Engage).

    lookup_match_keys: a receipt's bare email or phone is looked up first and sent by contact
    id (one request more per receipt); off, the cloud matches the key itself.
    """

    lookup_match_keys: bool

    def find_contact_id(self, *, email: str | None, mobile_phone: str | None) -> str | None: ...


Ticket = tuple[str, int]  # (queue, id): ids are per queue, and a destination has two lanes
BY_HAND = "dead-lettered by a technician (till-agent set-aside dead-letter)"
STOP_DRAIN_SECONDS = 35.0  # at stop, how long a send in flight may take to land (> a timeout)


HELD_PER_SEND = 16  # receipts claimed to wait their turn, at most, per send the window holds


class _NotSentError(Exception):
    """A send from the window not made: the destination paused while it waited its turn."""


@dataclass
class _Held:
    """A receipt claimed for the window, waiting its turn (prepared once its key is free)."""

    claimed: Claimed
    key: str  # its record key: its revisions go one after the other
    message: models.OutboundMessage | None = None
    needs: set[str] = field(default_factory=set)  # the member keys it names


@dataclass
class _Parked:
    ticket: Ticket
    due: float  # monotonic


@dataclass
class _Failing:
    """An item failing in this process: its age then, and when (and after how many sends)."""

    wall_age_seconds: float  # how long it had failed before (the ledger's wall-clock start)
    since: float  # monotonic, when this process first charged it
    sent_then: int  # the destination's deliveries at that moment
    charged: int = 0  # attempts charged in this process (for an item the ledger cannot name)


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
    parked: dict[Ticket, _Parked] = field(default_factory=dict)


class Dispatcher:
    """Delivers one destination's queue in order; one destination never holds another back."""

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
        self._heartbeat = heartbeat or (lambda: None)  # each loop pass: the watchdog's proof
        self._resolver = resolver
        self._metrics = metrics
        self.destination = destination
        self._budget = budget
        self._amends = amends
        self._sender = sender
        self._outbox = outbox
        self._ledger = ledger
        self._health = board
        self._settings = settings
        self._backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        self._monotonic = monotonic
        self._wait = wait  # pauses and back-off, on the same clock as monotonic
        self._claim_wait_seconds = claim_wait_seconds  # real time: a new item wakes it
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop or retry-now: cut a wait short
        self._hurry = threading.Event()  # retry-now: skip the back-off, set-aside items due
        # A technician's word on set-aside items (release, dead-letter), applied by the worker.
        self._asked: list[tuple[str, Ticket]] = []
        self._asked_lock = threading.Lock()
        self._condemned: set[Ticket] = set()
        self._hurry_asked = threading.Event()
        self._next_probe_at = 0.0  # monotonic: during an outage, when to ask the probe again
        # (key, revision) -> when it began failing: from there its age is measured by the
        # monotonic clock (R9), and whether another item has gone through since.
        self._failing: dict[tuple[str, int], _Failing] = {}
        self._stranded: list[Claimed] = []  # claimed, and the store could not take them back
        self.state = DestinationState()
        self._progress_at = monotonic()  # the last send that worked, or the last empty queue
        self._bulk = bulk  # contact changes in bulk calls (agent/delivery/bulk.py)
        # Receipts several at once (delivery.in_flight, agent/delivery/window.py); 1: one by one.
        # Each send in flight holds the heartbeat while it runs (begun): a stuck one stales it.
        self._window = Window(destination, in_flight, begun) if in_flight > 1 else None
        self._held: list[_Held] = []  # receipts claimed for the window, waiting their turn
        self._runs = 0  # bulk runs of contact changes in flight in the window
        self._reserved = 0  # places kept for a run (or a contact change) waiting for room
        if bulk is not None:
            bulk.wait = self._stop.wait
        self._thread = threading.Thread(target=self._loop, name=f"dispatch-{destination}")

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._restore_parked()
        self._report(ONLINE, "started")
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
        return [
            {
                "id": f"{queue}:{queue_id}",
                "destination": self.destination,
                "kind": str(item.get("kind", "")),
                "record_key": str(item.get("key", "")),
                "revision": int(item.get("revision") or 0),
                **self._ledger.failing(self.destination, item),
            }
            for queue, queue_id, item in self._outbox.parked(self.destination, limit)
        ]

    def ask(self, action: str, ticket: Ticket) -> None:
        """release (try it now) or dead_letter a set-aside item; NotFoundError if it is not
        set aside here. The worker applies it at its next pass."""
        if ticket not in {(q, i) for q, i, _ in self._outbox.parked(self.destination)}:
            raise NotFoundError(f"no set-aside item {ticket[0]}:{ticket[1]}")
        with self._asked_lock:
            self._asked.append((action, ticket))
        self._hurry_asked.set()
        self._wake.set()

    @property
    def alive(self) -> bool:
        """The worker thread runs (False before start and after stop or a fatal error)."""
        return self._thread.is_alive()

    def stalled_seconds(self) -> float:
        """How long items have waited without one delivered (monotonic: clock jumps don't count)."""
        return max(0.0, self._monotonic() - self._progress_at)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._heartbeat()
            try:
                self.step(claim_timeout_seconds=self._claim_wait_seconds)
            except Exception:  # a worker loop's top: report, wait, go on
                log.exception("dispatch to %s failed", self.destination)
                self._report(OFFLINE, "internal error; see the log")
                self._wait(self._stop, 1.0)
        self._drain_window()

    def step(self, claim_timeout_seconds: float = 0.0) -> bool:
        """One pass: wait out a pause, release what is due, deliver one item. True if it sent."""
        if self._hurry.is_set():
            self._hurry_up()
        if self._hurry_asked.is_set():
            self._apply_asked()
        self._land_all()
        if self._paused():
            return False
        self._release_stranded()
        self._unpark_due()
        busy = self._window is not None and len(self._window) > 0
        if busy and not self._may_claim():
            self._land_next(claim_timeout_seconds)  # enough wait their turn: wait for a send
            return False
        wait = 0.0 if busy else claim_timeout_seconds
        claimed = self._outbox.claim(self.destination, timeout_seconds=wait)
        if claimed is None:
            if busy:
                self._land_next(claim_timeout_seconds)  # nothing new: wait for a send
            elif not self.state.parked:
                self._progress_at = self._monotonic()  # nothing waits: not stalled
            return False
        try:
            self._handle(claimed)
        except StoppingError:
            self._outbox.release(claimed)  # stopping mid-send: back in its place, uncharged
            return False
        except Exception:
            self._put_back(claimed)  # the store failed or we are stopping
            raise
        self._start_held()
        return True

    def _put_back(self, claimed: Claimed) -> None:
        """The item goes back in its place; a store that cannot take it: again next step."""
        try:
            with contextlib.suppress(NotFoundError):
                self._outbox.release(claimed)
        except StorageError:
            self._stranded.append(claimed)  # a full or failing disk: again next step

    def _handle(self, claimed: Claimed) -> None:
        """A technician's dead-letter order, a run of contact changes, or one item's send."""
        if (claimed.lane_queue, claimed.id) in self._condemned:
            self._condemned.discard((claimed.lane_queue, claimed.id))
            self._dead_letter(claimed, Failure(BY_HAND, new_error_id()))
        elif self._window is not None and claimed.item.get("kind") == "receipt":
            self._held.append(_Held(claimed, str(claimed.item.get("key"))))  # step starts it
        elif self._bulk is not None and self._bulk.takes(claimed):
            if self._window is not None:
                self._start_run(claimed)
            else:
                self._deliver_run(claimed)
        elif self._window is None or self._contacts_turn(claimed):
            self._deliver(claimed)  # (else the destination paused: back in its place)

    # -- the window: several sends in flight (agent/delivery/window.py) ---------------------------

    def _may_claim(self) -> bool:
        """Room to claim one more: not too many waiting their turn. The claim runs ahead of a
        full window (its sends waiting for the rate), so the runs of contact changes further on
        start early and the receipts naming their members do not wait at the end of a stretch."""
        window = self._window
        return window is None or len(self._held) < HELD_PER_SEND * window.size

    def _start_held(self) -> None:
        """Start the receipts waiting their turn, in the order claimed: each once its
        receipt's earlier revision and the member it names are no longer in flight."""
        if not self._held or self._window is None:
            return
        if self._stop.is_set() or self._paused_now():
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
                self._put_back(held.claimed)
                self._held += held_now[position + 1 :]
                raise
            if not launched:
                self._held.append(held)
                waiting.add(held.key)

    def _launch(self, held: _Held) -> bool:
        """Prepare a receipt (here) and start its send (on the window's thread); False when
        the member it names is in flight still. Settled here when it cannot be prepared."""
        assert self._window is not None
        if held.message is None:
            try:
                message = self._prepare(held.claimed)
            except (StorageError, StoppingError):
                raise
            except Exception as exc:  # this item's attempt failed, for whatever reason
                self._settle(held.claimed, exc)
                return True
            if message is None:
                return True  # settled: nothing this cloud counts has changed
            held.message = message
            held.needs = _members_named(message)
        if self._window.holds(held.needs):
            return False
        keys = frozenset({held.key, *held.needs})
        send = functools.partial(self._send_in_window, held.message)
        self._window.start(held.claimed, keys, held.message, send)
        return True

    def _release_held(self) -> None:
        """Every receipt waiting its turn back in its place (a pause, a stop, a run whose
        contacts went back: the order is made again from the queue)."""
        held, self._held = self._held, []
        for waiting in held:
            self._put_back(waiting.claimed)

    def _contacts_turn(self, claimed: Claimed, *others: Claimed) -> bool:
        """A contact change sent alone (or an item that is not a receipt) waits for the bulk
        runs in flight to land, and for room. False: the destination paused or is stopping
        meanwhile (claimed and others released)."""
        return self._turn(lambda: self._runs == 0, 1, [claimed, *others])

    def _turn(self, free: Callable[[], bool], weight: int, claimed: list[Claimed]) -> bool:
        """Wait for landings until free() and room for weight; False (claimed released) if the
        destination paused or is stopping meanwhile."""
        assert self._window is not None
        try:
            while not (free() and self._window.has_room(weight)):
                # Free to go but for room: the places that land are kept for it (receipts
                # waiting their turn would take each as it frees, and a run would starve).
                self._reserved = weight if free() else 0
                self._land_next(1.0)
                if self._stop.is_set() or self._paused_now():
                    for item in claimed:
                        self._put_back(item)
                    return False
            return True
        finally:
            self._reserved = 0

    def _start_run(self, head: Claimed) -> None:
        """Claim a run of contact changes here and send it on the window's thread, beside the
        receipts and other runs; the receipts naming its members, and changes to the same
        contacts in a later run, wait for it to land."""
        assert self._bulk is not None
        assert self._window is not None
        run, entries = self._bulk.gather(head)
        if not entries:  # the head alone (and those claimed behind it back in their places)
            if self._contacts_turn(head, *run.untouched):
                self._apply_run(run)
            return
        bulk, window = self._bulk, self._window
        keys = frozenset({*(_member_key(k) for k in bulk.keys(entries)), *bulk.identities(entries)})
        weight = min(window.size, 1 + bulk.settings.lookups_at_once)
        if not self._turn(lambda: not window.holds(keys), weight, [e.claimed for e in entries]):
            return
        window.start(head, keys, run, functools.partial(bulk.send, run, entries), weight)
        self._runs += 1

    def _send_in_window(self, message: models.OutboundMessage) -> object:
        """On a window thread: within the rate budget, and only while the destination is not
        paused (a 429, an outage or a stop that came meanwhile holds it back, unsent)."""
        self._spend()
        if self._stop.is_set() or self._paused_now():
            raise _NotSentError("the destination paused before this send")
        return self._sender.send(self._resolved(message))

    def _land_all(self) -> None:
        while self._window is not None and (landed := self._window.land()) is not None:
            self._apply_landed(landed)
        self._start_held()

    def _land_next(self, timeout_seconds: float) -> None:
        landed = None if self._window is None else self._window.land(timeout_seconds)
        if landed is not None:
            self._apply_landed(landed)
        self._start_held()

    def _apply_landed(self, landed: Landed) -> None:
        """A send from the window has finished: the outcome it would have had alone, except
        that a send held back, or failing into a pause already known, goes back uncharged."""
        claimed, error = landed.claimed, landed.error
        try:
            if isinstance(landed.message, Run):
                self._run_landed(landed.message, error)
            elif error is None:
                failpoint("dispatch.after_send")
                self._remember_cloud_contact(claimed.item, landed.result)
                self._on_success(claimed, landed.message)
                self._honour_rate_limit_headers(landed.result)
            elif isinstance(error, StorageError):
                raise error
            elif isinstance(error, _NotSentError | StoppingError) or (
                self._paused_now() and (needs_probe(error) or isinstance(error, ThrottledError))
            ):
                self._outbox.release(claimed)  # in its place; the pause speaks for it
            else:
                self._settle(claimed, error)
        except StoppingError:
            self._put_back(claimed)  # stopping while judging it (the probe): back, uncharged
        except Exception:
            self._put_back(claimed)
            raise

    def _run_landed(self, run: Run, error: BaseException | None) -> None:
        """A bulk run has landed: its items' outcomes; if any went back to the queue, the
        receipts waiting (perhaps for those members) go back too, to follow them again."""
        self._runs -= 1
        if error is not None:
            self._release_held()
            raise error  # the head goes back in its place (the rest did in BulkContacts)
        self._apply_run(run)
        if run.untouched or run.single or run.blamed is not None or run.pause is not None:
            self._release_held()

    def _drain_window(self) -> None:
        """At stop: wait for the sends in flight and apply their outcomes (a delivered item is
        acked, not sent again after the restart); the receipts waiting go back in place."""
        while self._window is not None and len(self._window) > 0:
            landed = self._window.land(STOP_DRAIN_SECONDS)
            if landed is None:
                log.warning("sends to %s still in flight at stop", self.destination)
                break  # their items are still claimed: back in line at the next start
            try:
                self._apply_landed(landed)
            except Exception:  # stopping: report and go on with the others
                log.exception("an outcome for %s could not be applied at stop", self.destination)
        with contextlib.suppress(Exception):
            self._release_held()

    def _paused_now(self) -> bool:
        return self.state.paused_until > self._monotonic()

    def _paused(self) -> bool:
        """Wait (a second at most) while the destination is paused; during an outage, ask the
        probe every recovery_probe_seconds, so a recovered cloud is used again within that."""
        now = self._monotonic()
        wait = self.state.paused_until - now
        if wait <= 0:
            return False
        if self.state.state == OFFLINE and now >= self._next_probe_at:
            self._recovery_probe()
            return True
        until_probe = self._next_probe_at - now if self.state.state == OFFLINE else 1.0
        self._wait(self._wake, min(wait, 1.0, until_probe))  # on the timebase's clock
        self._wake.clear()
        return True

    def _recovery_probe(self) -> None:
        self._next_probe_at = self._monotonic() + self._settings.recovery_probe_seconds
        if self._probe():
            self.state.paused_until = 0.0
            self.state.consecutive_failures = 0
            self._report(ONLINE, "the cloud answers again")

    def _hurry_up(self) -> None:
        """retry-now: no pause, every set-aside item due, the probe asked at the next need."""
        self._hurry.clear()
        now = self._monotonic()
        self.state.paused_until = 0.0
        self._next_probe_at = 0.0
        for parked in self.state.parked.values():
            parked.due = now
        log.info("retry-now for %s", self.destination)

    def _apply_asked(self) -> None:
        """A technician's release (due now) or dead-letter (unparked, then dead-lettered
        when claimed: at once, it keeps its place at the front) of set-aside items."""
        self._hurry_asked.clear()
        with self._asked_lock:
            asked, self._asked = self._asked, []
        for action, ticket in asked:
            if action == "dead_letter":
                self._condemned.add(ticket)
            self.state.parked.pop(ticket, None)
            self._outbox.unpark(*ticket)
            log.info("%s of a set-aside item of %s", action, self.destination)

    def _release_stranded(self) -> None:
        """Put back what a failing store kept claimed; StorageError: still failing, next step."""
        while self._stranded:
            with contextlib.suppress(NotFoundError):
                self._outbox.release(self._stranded[0])
            self._stranded.pop(0)

    # -- one item ------------------------------------------------------------------------

    def _deliver(self, claimed: Claimed) -> None:
        """Prepare and send one item, then apply the outcome decide() gives for what happened.

        Whatever this one item raises while we prepare, encode or send it is judged as its
        attempt (the outcome table), except the local store failing and shutdown, which are
        nobody's attempt: the item goes back in its place (step()).
        """
        try:
            message = self._prepare(claimed)
            if message is None:
                return
            self._spend()
            result = self._sender.send(self._resolved(message))
        except (StorageError, StoppingError):
            raise
        except Exception as exc:  # this item's attempt failed, for whatever reason
            self._settle(claimed, exc)
            return
        failpoint("dispatch.after_send")
        self._remember_cloud_contact(claimed.item, result)
        self._on_success(claimed, message)
        self._honour_rate_limit_headers(result)

    def _settle(self, claimed: Claimed, error: BaseException) -> None:
        """decide() over the error, the item's history and (when it matters) the probe."""
        signals = Signals(reachable=self._probe() if needs_probe(error) else None)
        outcome = decide(error, self._history(claimed.item), signals, self._settings)
        failure = failure_of(error, new_error_id())
        if outcome.charged:
            self._start_failing(claimed.item, outcome.attempts)
            if not isinstance(error, CloudError | UnsendableError):
                log.error(  # not an error we expect: its traceback, for whoever fixes it
                    "an item of %s failed in the agent",
                    self.destination,
                    exc_info=error,
                    extra={"errorId": failure.error_id},
                )
        self._apply(claimed, outcome, error, failure)

    def _apply(
        self, claimed: Claimed, outcome: Outcome, error: BaseException, failure: Failure
    ) -> None:
        verdict = outcome.verdict
        if verdict is Verdict.DEAD_LETTER:
            self._dead_letter(claimed, failure)
        elif verdict is Verdict.SET_ASIDE:
            self._set_aside(claimed, outcome.attempts, failure)
        elif verdict is Verdict.RETRY:
            self._retry(claimed, outcome.attempts, failure)
        elif verdict is Verdict.OUTAGE:
            self._on_outage(claimed, failure)
        elif verdict is Verdict.THROTTLED:
            self._on_throttled(claimed, error)
        else:  # Verdict.HALTED
            self._on_halted(claimed, error, failure)

    def _history(self, item: dict[str, Any]) -> ItemHistory:
        """Its charged attempts, how long it has failed, whether another item got through since.

        The age is the ledger's wall-clock start read once, then the monotonic clock: a wall
        clock stepped while the agent runs (NTP, an RTC reset) neither ages nor rejuvenates a
        failing item, so a jump never dead-letters a whole queue at once.
        """
        attempts = self._ledger.attempts(self.destination, item)
        seen = self._failing.get(_ident(item))
        if seen is None:
            return ItemHistory(attempts=attempts)
        attempts = max(attempts, seen.charged)
        hours = (seen.wall_age_seconds + self._monotonic() - seen.since) / 3600
        return ItemHistory(attempts, hours, others_delivered=self.state.sent > seen.sent_then)

    def _start_failing(self, item: dict[str, Any], attempts: int) -> None:
        ident = _ident(item)
        if ident not in self._failing:
            first = self._ledger.first_failed_at(self.destination, item)
            wall_age = 0.0 if first is None else max(0.0, time.time() - first)
            self._failing[ident] = _Failing(wall_age, self._monotonic(), self.state.sent)
        self._failing[ident].charged = attempts

    def _probe(self) -> bool | None:
        """Does the destination answer? Its connector's cheap probe (None: it has none, or our
        own budget forbids a request now). A refusal (4xx) is an answer too."""
        probe = getattr(self._sender, "probe", None)
        if probe is None:
            return None
        try:
            self._spend()
        except ThrottledError:
            return None
        try:
            probe()
        except RejectedError:
            return True
        except (CloudError, ConfigError, UnsendableError):
            return False
        return True

    def _deliver_run(self, head: Claimed) -> None:
        """A run of contact changes through the bulk endpoint; per-item outcomes applied."""
        assert self._bulk is not None
        self._apply_run(self._bulk.deliver(head))

    def _apply_run(self, run: Run) -> None:
        """What became of each item of a run: acked, released, sent alone, or charged."""
        if run.alone is not None:
            self._deliver(run.alone)
        for claimed, cloud_id in run.delivered:
            if cloud_id is not None:
                self._ledger.record_cloud_contact(str(claimed.item["key"]), cloud_id)
            self._on_success(claimed)
        for claimed in run.untouched + run.single:  # a single one goes alone on the next pass
            self._outbox.release(claimed)
        if run.pause is not None:
            self._pause(run.pause[0])
            self._report(THROTTLED, run.pause[1])
        if run.error is not None and run.blamed is not None:
            self._settle(run.blamed, run.error)

    def _prepare(self, claimed: Claimed) -> models.OutboundMessage | None:
        """The message to send, or None when the item was settled here (no change to send).

        UnsendableError when the queued item cannot be read back (not JSON, not our shape, a
        key that is gone): that item's problem alone.
        """
        if claimed.item.get("kind") == UNDECODABLE:
            # Named by the ledger's record queued at that place, so its state tells the truth.
            claimed.item.update(self._ledger.record_at(claimed.lane_queue, claimed.id) or {})
            raise UnsendableError(f"the queued item cannot be read back: {claimed.item['why']}")
        try:
            message = self._ledger.message_for(claimed.item)
        except (msgspec.ValidationError, KeyError, TypeError, ValueError) as exc:
            raise UnsendableError(f"the queued item cannot be read back: {_what(exc)}") from exc
        if self._amends != "difference":
            return message
        amended = self._as_difference(claimed.item, message)
        if amended is None:
            self._on_success(claimed)  # nothing this cloud counts has changed
        return amended

    def _resolved(self, message: models.OutboundMessage) -> models.OutboundMessage:
        """A member registered here goes by its cloud id; a bare key as it came (or looked up)."""
        receipt = message.receipt
        if self._resolver is not None and message.contact is not None:
            if message.contact.contact_id is None:
                self._spend()  # the cloud is asked first whether it knows the contact already
            return message
        if self._resolver is None or receipt is None or receipt.contact is None:
            return message
        contact = receipt.contact
        if contact.local_id is not None:
            cloud_id = self._ledger.cloud_contact_id(contact.local_id)
            if cloud_id is None:  # the member registered here has not reached the cloud yet
                raise UnsendableError(
                    "its member, registered at this till, has not reached the cloud yet",
                    connector=self.destination,
                )
            return msgspec.structs.replace(message, cloud_contact_id=cloud_id)
        email, phone = buyer_keys(contact)
        if not self._resolver.lookup_match_keys or (email is None and phone is None):
            return message  # the cloud matches the key itself: one request, no member made
        # A tenant that wants contact ids: look the key up on every attempt; never create a
        # member for it (a typed phone number is not consent to join a loyalty programme).
        try:
            self._spend()
            cloud_id = self._resolver.find_contact_id(email=email, mobile_phone=phone)
        except RejectedError as exc:
            if exc.status == MULTIPLE_MATCHES:
                return message  # several contacts share the key: let the cloud choose, as-is
            raise
        if cloud_id is None:
            return message  # unknown to the cloud: sent with its key, as the POS gave it
        return msgspec.structs.replace(message, cloud_contact_id=cloud_id)

    def _remember_cloud_contact(self, item: dict[str, object], result: object) -> None:
        """A member registered here now has a cloud id: later receipts refer to it by that."""
        cloud_id = getattr(result, "cloud_id", None)
        if item.get("kind") == "contact" and isinstance(cloud_id, str):
            self._ledger.record_cloud_contact(str(item["key"]), cloud_id)

    def _as_difference(
        self, item: dict[str, object], message: models.OutboundMessage
    ) -> models.OutboundMessage | None:
        """For an append-only cloud: a later revision goes as the difference to the last one."""
        revision = int(str(item["revision"]))
        if message.receipt is None or revision == 1:
            return message
        earlier = self._ledger.delivered_before(self.destination, str(item["key"]), revision)
        if earlier is None:
            return message  # the cloud never got an earlier revision: send this one whole
        delivered = msgspec.convert(earlier, models.Receipt, strict=False)
        diff = amend.difference(delivered, message.receipt, revision)
        if diff is None:
            return None
        contact = message.receipt.contact
        return msgspec.structs.replace(
            message,
            idempotency_key=diff.unique_receipt_id,
            receipt=msgspec.structs.replace(diff, contact=contact),
        )

    def _spend(self) -> None:
        """One request within the budget: wait a short while, or raise ThrottledError (the
        item goes back in its place and the destination pauses) when the wait is long."""
        budget, spaced = self._budget, self._window is not None
        verdict = Budget(True) if budget is None else budget.spend(self._stop.wait, spaced=spaced)
        if not verdict.allowed:
            raise ThrottledError(
                verdict.reason, connector=self.destination, retry_after_seconds=verdict.wait_seconds
            )

    def _honour_rate_limit_headers(self, result: object) -> None:
        """X-RateLimit-Remaining 0: wait for the window to reset before the next call."""
        remaining = getattr(result, "rate_limit_remaining", None)
        if isinstance(remaining, int) and remaining <= 0:
            reset = getattr(result, "rate_limit_reset_seconds", None)
            self._pause(float(reset) if isinstance(reset, int | float) else 1.0)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.sends.labels(self.destination, outcome).inc()

    # -- outcomes ------------------------------------------------------------------------

    def _on_success(self, claimed: Claimed, sent: models.OutboundMessage | None = None) -> None:
        """The cloud took it (sent: what went out, when anything did)."""
        self._count("delivered")
        if self._bulk is not None:
            self._bulk.settled(claimed)
        item = claimed.item
        # The ledger first, then the ack: a crash between resends with the same key.
        self._ledger.record_delivery(
            self.destination,
            item["key"],
            item["revision"],
            "delivered",
            body=item.get("body"),
            journal=item,
            sent=_figures_sent(sent),
            append_only=self._amends == "difference",
        )
        self._outbox.ack(claimed)
        self._done_failing(claimed.item)
        st = self.state
        st.sent, st.consecutive_failures, st.last_success_at = st.sent + 1, 0, time.time()
        self._progress_at = self._monotonic()
        if not self._paused_now():  # a send in flight landing during a pause: the pause's words
            self._report(ONLINE, "delivering")

    def _on_throttled(self, claimed: Claimed, exc: BaseException) -> None:
        """429 or our own budget: the whole destination waits; the item keeps its place."""
        assert isinstance(exc, ThrottledError)
        self._count("throttled")
        if self._metrics is not None and exc.status is not None:
            self._metrics.throttled.labels(self.destination).inc()
        self._outbox.release(claimed)
        self._pause(exc.retry_after_seconds)
        if exc.status is None:  # our own budget, not the cloud
            self._report(THROTTLED, str(exc))
        else:
            self._report(THROTTLED, "the cloud asked us to wait")

    def _on_halted(self, claimed: Claimed, exc: BaseException, failure: Failure) -> None:
        """401/403 or the destination's settings: no item can succeed; keep the queue, alert,
        re-probe slowly (retry-now hurries it)."""
        self._count("auth")
        self._outbox.release(claimed)
        self._pause(self._settings.auth_probe_seconds)
        log.error(
            "%s halted: %s",
            self.destination,
            failure.reason,
            extra={"status": failure.status, "cloudErrorId": failure.cloud_error_id},
        )
        kept = "; queue kept" if isinstance(exc, AuthError) else ""
        self._report(HALTED, f"{failure.reason}{kept}")

    def _on_outage(self, claimed: Claimed, failure: Failure) -> None:
        """The probe confirmed it: the destination backs off (probing meanwhile), the item
        keeps its place and is not charged: offline time never uses up an item's attempts."""
        self._count("retry")
        if self._metrics is not None:
            self._metrics.retries.labels(self.destination).inc()
        st = self.state
        st.failed += 1
        st.consecutive_failures += 1
        delay = self._backoff.delay(st.consecutive_failures, self._rng)
        self._ledger.record_failure(
            self.destination, claimed.item, _later(failure, delay), charge=False
        )
        self._outbox.release(claimed)
        self._pause(delay)
        self._next_probe_at = self._monotonic() + self._settings.recovery_probe_seconds
        self._report(OFFLINE, failure.reason)

    def _retry(self, claimed: Claimed, attempts: int, failure: Failure) -> None:
        """The cloud answers, this item failed: it keeps its place for a short back-off."""
        self._count("retry")
        self.state.failed += 1
        delay = self._backoff.delay(attempts, self._rng)
        self._ledger.record_failure(self.destination, claimed.item, _later(failure, delay))
        self._outbox.release(claimed)
        self._pause(delay)
        self._report(ONLINE, f"retrying one item: {failure.reason}")

    def _set_aside(self, claimed: Claimed, attempts: int, failure: Failure) -> None:
        """This item fails on its own: it waits its own back-off; the next one goes now."""
        self._count("set_aside")
        self.state.failed += 1
        delay = self._backoff.delay(attempts, self._rng)
        self._ledger.record_failure(self.destination, claimed.item, _later(failure, delay))
        ticket = (claimed.lane_queue, claimed.id)
        self._outbox.park(claimed)
        self.state.parked[ticket] = _Parked(ticket, self._monotonic() + delay)
        log.warning(
            "set aside an item of %s",
            self.destination,
            extra={"errorId": failure.error_id, "attempts": attempts, "reason": failure.reason},
        )

    def _done_failing(self, item: dict[str, Any]) -> None:
        self._failing.pop(_ident(item), None)

    def _dead_letter(self, claimed: Claimed, failure: Failure) -> None:
        dead_letter_id = self._ledger.dead_letter(claimed, failure)
        if self._bulk is not None:
            self._bulk.settled(claimed)
        self._done_failing(claimed.item)
        if self._metrics is not None:
            reason = "rejected" if failure.status else "unsendable"
            self._metrics.dead_letters.labels(self.destination, reason).inc()
        self.state.parked.pop((claimed.lane_queue, claimed.id), None)
        log.warning(
            "dead-lettered an item of %s",
            self.destination,
            extra={
                "deadLetterId": dead_letter_id,
                "errorId": failure.error_id,
                "cloudErrorId": failure.cloud_error_id,
                "status": failure.status,
                "reason": failure.reason,
            },
        )

    # -- set-aside items -----------------------------------------------------------------

    def _unpark_due(self) -> None:
        now = self._monotonic()
        for ticket, parked in list(self.state.parked.items()):
            if parked.due <= now:
                self.state.parked.pop(ticket, None)
                self._outbox.unpark(*ticket)

    def _restore_parked(self) -> None:
        """After a restart, items set aside before go back in line (their counts are kept)."""
        for queue, queue_id, _ in self._outbox.parked(self.destination):
            self._outbox.unpark(queue, queue_id)

    # -- state ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """This destination's state for /v1/status (read from another thread: copies only)."""
        st = self.state
        return {
            "state": st.state,
            "detail": st.detail,
            "lastSuccessAt": st.last_success_at,
            "sent": st.sent,
            "failed": st.failed,
            "setAside": len(st.parked),
            "pausedSeconds": round(max(0.0, st.paused_until - self._monotonic()), 1),
        }

    def _pause(self, seconds: float) -> None:
        """Pause for seconds at least (a pause already longer stands: sends land in any order)."""
        until = self._monotonic() + max(0.0, seconds)
        self.state.paused_until = max(self.state.paused_until, until)

    def _report(self, state: str, detail: str) -> None:
        self.state.state, self.state.detail = state, detail
        self._health.report(f"destination:{self.destination}", HEALTH_FOR[state], detail)


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


def _figures_sent(sent: models.OutboundMessage | None) -> tuple[str, figures.Amounts] | None:
    """The key a receipt went out under and the figures of what went (reconciliation's view)."""
    if sent is None or sent.receipt is None:
        return None
    return sent.idempotency_key, figures.amounts_of(sent.receipt)


def buyer_keys(contact: models.ReceiptContact) -> tuple[str | None, str | None]:
    """(email, mobile phone) when the receipt names its buyer by one of those."""
    if contact.match_key_type == "email":
        return contact.match_key, None
    if contact.match_key_type == "mobilePhone":
        return None, contact.match_key
    return None, None


def failure_of(exc: BaseException, error_id: str) -> Failure:
    """Our record of a failed attempt: the reason in words, ids, status, the cloud's excerpt."""
    cloud = exc if isinstance(exc, CloudError) else None
    return Failure(
        reason=reason_in_words(exc),
        error_id=error_id,
        status=cloud.status if cloud else None,
        cloud_error_id=cloud.cloud_error_id if cloud else None,
        body_excerpt=redact(cloud.body_excerpt) if cloud else "",
    )


def _later(failure: Failure, delay: float) -> Failure:
    return dataclasses.replace(failure, next_attempt_at=time.time() + delay)


def _member_key(local_id: str) -> str:
    return f"member:{local_id}"


def _members_named(message: models.OutboundMessage) -> set[str]:
    """The window keys of the member registered at this till that a receipt names, if any."""
    contact = message.receipt.contact if message.receipt is not None else None
    if contact is None or contact.local_id is None:
        return set()
    return {_member_key(contact.local_id)}


def _ident(item: dict[str, Any]) -> tuple[str, int]:
    return str(item.get("key")), int(item.get("revision") or 0)


def _what(exc: BaseException) -> str:
    """An exception raised while reading an item back, in words (no values: they may be
    personal)."""
    if isinstance(exc, msgspec.ValidationError):
        return "not in the shape of a receipt or contact"
    if isinstance(exc, KeyError):
        return "a part of it is missing"
    return "its content is not valid"
