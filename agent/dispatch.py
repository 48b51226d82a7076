"""One send loop per destination: claim, send, then ack, retry, set aside or dead-letter."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from agent import amend, figures, health, models
from agent.bulk import BulkContacts
from agent.config import DeliverySettings
from agent.errors import (
    AuthError,
    CloudError,
    ConfigError,
    KeyStoreError,
    NotFoundError,
    RejectedError,
    RetryableError,
    StorageError,
    ThrottledError,
    new_error_id,
)
from agent.failpoints import failpoint
from agent.ledger import Failure, Ledger
from agent.logs import redact
from agent.metrics import Metrics
from agent.outbox import Claimed, Outbox
from agent.ratelimit import RateBudget, Verdict
from agent.retry import Backoff

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


class ContactResolver(Protocol):
    """A cloud that keeps contacts: find one by a secondary key, or create one (Engage)."""

    def find_contact_id(self, *, email: str | None, mobile_phone: str | None) -> str | None: ...

    def create_contact(self, contact: models.Contact) -> str: ...


Ticket = tuple[str, int]  # (queue, id): ids are per queue, and a destination has two lanes


@dataclass
class _Parked:
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
        rng: random.Random | None = None,
        budget: RateBudget | None = None,
        amends: str = "replace",
        resolver: ContactResolver | None = None,
        metrics: Metrics | None = None,
        heartbeat: Callable[[], None] | None = None,
        bulk: BulkContacts | None = None,
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
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._probing: Ticket | None = None  # the item set aside to tell poison from outage
        self._convicted: set[Ticket] = set()  # set aside while another item went through
        # (key, revision) -> (its failing age when this process first saw it fail, monotonic
        # then): from there on its age is measured by the monotonic clock (R9).
        self._failing: dict[tuple[str, int], tuple[float, float]] = {}
        self._stranded: list[Claimed] = []  # claimed, and the store could not take them back
        self.state = DestinationState()
        self._progress_at = monotonic()  # the last send that worked, or the last empty queue
        self._bulk = bulk  # contact changes in bulk calls (agent/bulk.py)
        if bulk is not None:
            bulk.wait = self._stop.wait
        self._thread = threading.Thread(target=self._loop, name=f"dispatch-{destination}")

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._restore_parked()
        self._report(ONLINE, "started")
        self._thread.start()

    def stop(self, timeout_seconds: float) -> None:
        """Stop after the send in flight (its item is acked or released, never dropped)."""
        self._stop.set()
        self._thread.join(timeout_seconds)

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
                self.step(claim_timeout_seconds=0.5)
            except Exception:  # a worker loop's top: report, wait, go on
                log.exception("dispatch to %s failed", self.destination)
                self._report(OFFLINE, "internal error; see the log")
                self._stop.wait(1.0)

    def step(self, claim_timeout_seconds: float = 0.0) -> bool:
        """One pass: wait out a pause, release what is due, deliver one item. True if it sent."""
        wait = self.state.paused_until - self._monotonic()
        if wait > 0:
            self._stop.wait(min(wait, 1.0))
            return False
        self._release_stranded()
        self._unpark_due()
        claimed = self._outbox.claim(self.destination, timeout_seconds=claim_timeout_seconds)
        if claimed is None:
            if not self._nothing_behind() and not self.state.parked:
                self._progress_at = self._monotonic()  # nothing waits: not stalled
            return False
        try:
            if self._bulk is not None and self._bulk.takes(claimed):
                self._deliver_run(claimed)
            else:
                self._deliver(claimed)
        except Exception:
            # Whatever went wrong, the item goes back in its place, never stuck as claimed.
            try:
                with contextlib.suppress(NotFoundError):
                    self._outbox.release(claimed)
            except StorageError:
                self._stranded.append(claimed)  # a full or failing disk: again next step
            raise
        return True

    def _release_stranded(self) -> None:
        """Put back what a failing store kept claimed; StorageError: still failing, next step."""
        while self._stranded:
            with contextlib.suppress(NotFoundError):
                self._outbox.release(self._stranded[0])
            self._stranded.pop(0)

    # -- one item ------------------------------------------------------------------------

    def _deliver(self, claimed: Claimed) -> None:
        message = self._prepare(claimed)
        if message is None or not self._within_budget(claimed):
            return
        try:
            result = self._sender.send(self._resolved(message))
        except (CloudError, ConfigError) as exc:
            self._on_failure(claimed, exc)
        else:
            failpoint("dispatch.after_send")
            self._remember_cloud_contact(claimed.item, result)
            self._on_success(claimed, message)
            self._honour_rate_limit_headers(result)

    def _on_failure(self, claimed: Claimed, exc: CloudError | ConfigError) -> None:
        """The outcome table of DESIGN §3 for a send that did not succeed."""
        if isinstance(exc, ThrottledError):
            self._on_throttled(claimed, exc)
        elif isinstance(exc, AuthError):
            self._on_auth(claimed, exc)
        elif isinstance(exc, RejectedError):
            self._dead_letter(claimed, failure_of(exc, new_error_id()))
        elif isinstance(exc, CloudError):  # RetryableError and anything else the cloud did
            self._on_retryable(claimed, failure_of(exc, new_error_id()))
        else:  # the destination's settings, not the item: halt
            self._outbox.release(claimed)
            self._pause(self._settings.auth_probe_seconds)
            self._report(HALTED, f"configuration problem: {exc}")

    def _deliver_run(self, head: Claimed) -> None:
        """A run of contact changes through the bulk endpoint; per-item outcomes applied."""
        assert self._bulk is not None
        run = self._bulk.deliver(head)
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
            self._on_failure(run.blamed, run.error)

    def _prepare(self, claimed: Claimed) -> models.OutboundMessage | None:
        """The message to send, or None when the item was settled here (unreadable, no change)."""
        try:
            message = self._ledger.message_for(claimed.item)
        except (msgspec.ValidationError, KeyStoreError, KeyError, TypeError) as exc:
            self._dead_letter(claimed, Failure(f"cannot be read back: {exc}", new_error_id()))
            return None
        if self._amends != "difference":
            return message
        amended = self._as_difference(claimed.item, message)
        if amended is None:
            self._on_success(claimed)  # nothing this cloud counts has changed
        return amended

    def _resolved(self, message: models.OutboundMessage) -> models.OutboundMessage:
        """The intelligent buffer: a receipt's buyer is found (or created) in the cloud first."""
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
                raise RetryableError(
                    "waiting for the member registered at this till", connector=self.destination
                )
            return msgspec.structs.replace(message, cloud_contact_id=cloud_id)
        email, phone = buyer_keys(contact)
        if email is None and phone is None:
            return message  # a member number, card id ...: the cloud resolves those itself
        # The vendor's advice: look before creating, on every attempt, so a retried create
        # never makes a duplicate.
        try:
            self._spend()
            cloud_id = self._resolver.find_contact_id(email=email, mobile_phone=phone)
        except RejectedError as exc:
            if exc.status == MULTIPLE_MATCHES:
                return message  # several contacts share the key: let the cloud choose, as-is
            raise
        if cloud_id is None:
            self._spend()
            cloud_id = self._resolver.create_contact(
                models.Contact(
                    email=email, mobile_phone=phone, store_external_id=receipt.store_external_id
                )
            )
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

    def _within_budget(self, claimed: Claimed) -> bool:
        """Wait (holding the item) for the request rate; a used-up budget pauses the destination."""
        try:
            self._spend()
        except ThrottledError as exc:
            self._outbox.release(claimed)
            self._pause(exc.retry_after_seconds)
            self._report(THROTTLED, str(exc))
            return False
        return True

    def _spend(self) -> None:
        """One request within the budget: wait a short while, or raise ThrottledError (the
        item goes back in its place and the destination pauses) when the wait is long."""
        verdict = Verdict(True) if self._budget is None else self._budget.spend(self._stop.wait)
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
        self._convicted.discard((claimed.lane_queue, claimed.id))
        self._done_failing(claimed.item)
        if self._probing is not None:
            log.warning("an item of %s fails alone; it is set aside", self.destination)
            self._convicted.add(self._probing)
            self._probing = None
        st = self.state
        st.sent, st.consecutive_failures, st.last_success_at = st.sent + 1, 0, time.time()
        self._progress_at = self._monotonic()
        self._report(ONLINE, "delivering")

    def _on_throttled(self, claimed: Claimed, exc: ThrottledError) -> None:
        """429: the whole destination waits Retry-After; the item keeps its place."""
        self._count("throttled")
        if self._metrics is not None:
            self._metrics.throttled.labels(self.destination).inc()
        self._outbox.release(claimed)
        self._pause(exc.retry_after_seconds)
        if exc.status is None:  # our own budget, not the cloud
            self._report(THROTTLED, str(exc))
        else:
            self._report(THROTTLED, "the cloud asked us to wait")

    def _on_auth(self, claimed: Claimed, exc: AuthError) -> None:
        """401/403: no item can succeed; keep the queue, alert, re-probe slowly."""
        self._count("auth")
        self._outbox.release(claimed)
        self._pause(self._settings.auth_probe_seconds)
        log.error(
            "credentials refused by %s",
            self.destination,
            extra={"status": exc.status, "cloudErrorId": exc.cloud_error_id},
        )
        self._report(HALTED, f"credentials refused ({exc.status}); queue kept")

    def _on_retryable(self, claimed: Claimed, failure: Failure) -> None:
        self._count("retry")
        if self._metrics is not None:
            self._metrics.retries.labels(self.destination).inc()
        st = self.state
        st.failed += 1
        st.consecutive_failures += 1
        delay = self._backoff.delay(st.consecutive_failures, self._rng)
        if self._probing is not None:
            self._outage(claimed, delay)  # the next item failed too: the cloud, not the item
            return
        attempts = self._ledger.record_failure(
            self.destination, claimed.item, _later(failure, delay)
        )
        self._failing_hours(claimed.item)  # its age starts counting now, in this process
        if attempts < self._settings.set_aside_after_attempts:
            self._outbox.release(claimed)
            self._pause(delay)
            self._report(OFFLINE, failure.reason)
        elif self._given_up(claimed, attempts):
            self._dead_letter(claimed, failure)
        else:
            self._set_aside(claimed, attempts)

    def _outage(self, claimed: Claimed, delay: float) -> None:
        """Put every set-aside item back in its place, uncharged, and back off."""
        self._outbox.release(claimed)
        for ticket in list(self.state.parked):
            self._unpark(ticket, forgive=True)
        self._probing = None
        self._pause(delay)
        self._report(OFFLINE, "cloud unreachable")

    def _set_aside(self, claimed: Claimed, attempts: int) -> None:
        """This item failed again: park it with its own next attempt; try the next one now."""
        due = self._monotonic() + self._backoff.delay(attempts, self._rng)
        ticket = (claimed.lane_queue, claimed.id)
        self._outbox.park(claimed)
        self.state.parked[ticket] = _Parked(ticket, due)
        self._probing = ticket

    def _given_up(self, claimed: Claimed, attempts: int) -> bool:
        if attempts >= self._settings.max_attempts:
            return True
        return self._failing_hours(claimed.item) >= self._settings.max_age_hours

    def _failing_hours(self, item: dict[str, Any]) -> float:
        """How long an item has failed: the ledger's wall-clock start read once, then monotonic.

        A wall clock stepped while the agent runs (NTP, an RTC reset) neither ages nor
        rejuvenates a failing item, so a jump never dead-letters a whole queue at once.
        """
        ident = (str(item["key"]), int(item["revision"]))
        seen = self._failing.get(ident)
        if seen is None:
            first = self._ledger.first_failed_at(self.destination, item)
            wall_age = 0.0 if first is None else max(0.0, time.time() - first)
            seen = self._failing[ident] = (wall_age, self._monotonic())
        return (seen[0] + self._monotonic() - seen[1]) / 3600

    def _done_failing(self, item: dict[str, Any]) -> None:
        self._failing.pop((str(item["key"]), int(item["revision"])), None)

    def _dead_letter(self, claimed: Claimed, failure: Failure) -> None:
        dead_letter_id = self._ledger.dead_letter(claimed, failure)
        if self._bulk is not None:
            self._bulk.settled(claimed)
        self._done_failing(claimed.item)
        if self._metrics is not None:
            reason = "rejected" if failure.status else "unsendable"
            self._metrics.dead_letters.labels(self.destination, reason).inc()
        self.state.parked.pop((claimed.lane_queue, claimed.id), None)
        self._convicted.discard((claimed.lane_queue, claimed.id))
        log.warning(
            "dead-lettered an item of %s",
            self.destination,
            extra={
                "deadLetterId": dead_letter_id,
                "errorId": failure.error_id,
                "cloudErrorId": failure.cloud_error_id,
                "status": failure.status,
            },
        )

    # -- set-aside items -----------------------------------------------------------------

    def _unpark_due(self) -> None:
        now = self._monotonic()
        for ticket, parked in list(self.state.parked.items()):
            if parked.due <= now:
                self._unpark(ticket, forgive=False)

    def _unpark(self, ticket: Ticket, *, forgive: bool) -> None:
        self.state.parked.pop(ticket, None)
        if self._probing == ticket:
            self._probing = None
        if forgive:
            for queue, queue_id, item in self._outbox.parked(self.destination):
                if (queue, queue_id) == ticket:
                    self._ledger.forgive(self.destination, item)
                    self._done_failing(item)
        self._outbox.unpark(*ticket)

    def _nothing_behind(self) -> bool:
        """No item behind the set-aside one to tell poison from outage: do not charge it.

        Unless another item has gone through while it was set aside (so the cloud works and
        this item fails alone), it goes back in its place with its count reset, and waits its
        own delay: a lone sale during an outage is retried, never dead-lettered by the outage.
        True when it put an item back.
        """
        ticket, self._probing = self._probing, None
        if ticket is None or ticket in self._convicted or ticket not in self.state.parked:
            return False
        due = self.state.parked[ticket].due
        self._unpark(ticket, forgive=True)
        self._pause(due - self._monotonic())
        return True

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
        self.state.paused_until = self._monotonic() + max(0.0, seconds)

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
    if contact.match_key_type == "Email":
        return contact.match_key, None
    if contact.match_key_type == "MobilePhone":
        return None, contact.match_key
    return None, None


def failure_of(exc: CloudError, error_id: str) -> Failure:
    """Our record of a cloud error: ids, status, a short reason; never the request body."""
    return Failure(
        reason=f"{type(exc).__name__}: {exc}"[:300],
        error_id=error_id,
        status=exc.status,
        cloud_error_id=exc.cloud_error_id,
        body_excerpt=redact(exc.body_excerpt),
    )


def _later(failure: Failure, delay: float) -> Failure:
    return Failure(
        failure.reason,
        failure.error_id,
        failure.status,
        failure.cloud_error_id,
        failure.body_excerpt,
        next_attempt_at=time.time() + delay,
    )
