"""Records what became of an attempt: in the ledger and the queue, and what the destination does."""

from __future__ import annotations

import dataclasses
import logging
import random
import time

from agent.core import figures, models
from agent.core.config import DeliverySettings
from agent.core.errors import AuthError, CloudError, ThrottledError
from agent.core.logs import redact
from agent.core.metrics import Metrics
from agent.core.reasons import reason_in_words
from agent.core.retry import Backoff
from agent.delivery.bulk import BulkContacts
from agent.delivery.history import FailingItems
from agent.delivery.outcome import Outcome, Verdict
from agent.delivery.setaside import SetAside
from agent.delivery.state import HALTED, OFFLINE, ONLINE, THROTTLED, Destination
from agent.ledger import Claimed, Failure, Ledger, Outbox

log = logging.getLogger(__name__)


class Recorder:
    """Applies an outcome of the outcome table: what the ledger and the queue keep of the item,
    and what the destination does next (its pause, its state, its counters)."""

    def __init__(
        self,
        destination: Destination,
        outbox: Outbox,
        ledger: Ledger,
        settings: DeliverySettings,
        set_aside: SetAside,
        failing: FailingItems,
        *,
        append_only: bool = False,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        bulk: BulkContacts | None = None,
    ) -> None:
        self._destination = destination
        self._name = destination.name
        self._outbox = outbox
        self._ledger = ledger
        self._settings = settings
        self._set_aside = set_aside
        self._failing = failing
        self._append_only = append_only  # the ledger keeps what went, for later differences
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._bulk = bulk
        self._backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)

    def delivered(self, claimed: Claimed, sent: models.OutboundMessage | None = None) -> None:
        """The cloud took it (sent: what went out, when anything did)."""
        self._count("delivered")
        if self._bulk is not None:
            self._bulk.settled(claimed)
        item = claimed.item
        # The ledger first, then the ack: a crash between resends with the same key.
        self._ledger.record_delivery(
            self._name,
            item["key"],
            item["revision"],
            "delivered",
            body=item.get("body"),
            journal=item,
            sent=_figures_sent(sent),
            append_only=self._append_only,
        )
        self._outbox.ack(claimed)
        self._failing.done(claimed.item)
        self._destination.delivered()
        if not self._destination.paused_now():  # a send landing in a pause: the pause's words
            self._destination.report(ONLINE, "delivering")

    def apply(
        self, claimed: Claimed, outcome: Outcome, error: BaseException, failure: Failure
    ) -> None:
        """A failed attempt's outcome (decide()'s verdict) applied to the item and destination."""
        verdict = outcome.verdict
        if verdict is Verdict.DEAD_LETTER:
            self.dead_letter(claimed, failure)
        elif verdict is Verdict.SET_ASIDE:
            self._put_aside(claimed, outcome.attempts, failure)
        elif verdict is Verdict.RETRY:
            self._retry(claimed, outcome.attempts, failure)
        elif verdict is Verdict.OUTAGE:
            self._outage(claimed, failure)
        elif verdict is Verdict.THROTTLED:
            self._throttled(claimed, error)
        else:  # Verdict.HALTED
            self._halted(claimed, error, failure)

    def dead_letter(self, claimed: Claimed, failure: Failure) -> None:
        """Given up: into the dead letters with its reason, out of the queue, in one go."""
        dead_letter_id = self._ledger.dead_letter(claimed, failure)
        if self._bulk is not None:
            self._bulk.settled(claimed)
        self._failing.done(claimed.item)
        if self._metrics is not None:
            reason = "rejected" if failure.status else "unsendable"
            self._metrics.dead_letters.labels(self._name, reason).inc()
        self._set_aside.forget(claimed)
        log.warning(
            "dead-lettered an item of %s",
            self._name,
            extra={
                "deadLetterId": dead_letter_id,
                "errorId": failure.error_id,
                "cloudErrorId": failure.cloud_error_id,
                "status": failure.status,
                "reason": failure.reason,
            },
        )

    def _throttled(self, claimed: Claimed, exc: BaseException) -> None:
        """429 or our own budget: the whole destination waits; the item keeps its place."""
        assert isinstance(exc, ThrottledError)
        self._count("throttled")
        if self._metrics is not None and exc.status is not None:
            self._metrics.throttled.labels(self._name).inc()
        self._outbox.release(claimed)
        self._destination.pause(exc.retry_after_seconds)
        if exc.status is None:  # our own budget, not the cloud
            self._destination.report(THROTTLED, str(exc))
        else:
            self._destination.report(THROTTLED, "the cloud asked us to wait")

    def _halted(self, claimed: Claimed, exc: BaseException, failure: Failure) -> None:
        """401/403 or the destination's settings: no item can succeed; keep the queue, alert,
        re-probe slowly (retry-now hurries it)."""
        self._count("auth")
        self._outbox.release(claimed)
        self._destination.pause(self._settings.auth_probe_seconds)
        log.error(
            "%s halted: %s",
            self._name,
            failure.reason,
            extra={"status": failure.status, "cloudErrorId": failure.cloud_error_id},
        )
        kept = "; queue kept" if isinstance(exc, AuthError) else ""
        self._destination.report(HALTED, f"{failure.reason}{kept}")

    def _outage(self, claimed: Claimed, failure: Failure) -> None:
        """The probe confirmed it: the destination backs off (probing meanwhile), the item
        keeps its place and is not charged: offline time never uses up an item's attempts."""
        self._count("retry")
        if self._metrics is not None:
            self._metrics.retries.labels(self._name).inc()
        st = self._destination.state
        st.failed += 1
        st.consecutive_failures += 1
        delay = self._backoff.delay(st.consecutive_failures, self._rng)
        self._ledger.record_failure(self._name, claimed.item, _later(failure, delay), charge=False)
        self._outbox.release(claimed)
        self._destination.pause(delay)
        self._destination.next_probe_at = (
            self._destination.monotonic() + self._settings.recovery_probe_seconds
        )
        self._destination.report(OFFLINE, failure.reason)

    def _retry(self, claimed: Claimed, attempts: int, failure: Failure) -> None:
        """The cloud answers, this item failed: it keeps its place for a short back-off."""
        self._count("retry")
        self._destination.state.failed += 1
        delay = self._backoff.delay(attempts, self._rng)
        self._ledger.record_failure(self._name, claimed.item, _later(failure, delay))
        self._outbox.release(claimed)
        self._destination.pause(delay)
        self._destination.report(ONLINE, f"retrying one item: {failure.reason}")

    def _put_aside(self, claimed: Claimed, attempts: int, failure: Failure) -> None:
        """This item fails on its own: it waits its own back-off; the next one goes now."""
        self._count("set_aside")
        self._destination.state.failed += 1
        delay = self._backoff.delay(attempts, self._rng)
        self._ledger.record_failure(self._name, claimed.item, _later(failure, delay))
        self._set_aside.put(claimed, delay)
        log.warning(
            "set aside an item of %s",
            self._name,
            extra={"errorId": failure.error_id, "attempts": attempts, "reason": failure.reason},
        )

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.sends.labels(self._name, outcome).inc()


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


def _figures_sent(sent: models.OutboundMessage | None) -> tuple[str, figures.Amounts] | None:
    """The key a receipt went out under and the figures of what went (reconciliation's view)."""
    if sent is None or sent.receipt is None:
        return None
    return sent.idempotency_key, figures.amounts_of(sent.receipt)


def _later(failure: Failure, delay: float) -> Failure:
    return dataclasses.replace(failure, next_attempt_at=time.time() + delay)
