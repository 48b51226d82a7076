"""One item's attempt through the stages: prepare, budget and send, decide, record."""

from __future__ import annotations

import contextlib
import logging

from agent.core import models
from agent.core.config import DeliverySettings
from agent.core.errors import (
    CloudError,
    NotFoundError,
    StoppingError,
    StorageError,
    UnsendableError,
    new_error_id,
)
from agent.core.failpoints import failpoint
from agent.delivery import budget
from agent.delivery.bulk import BulkContacts, Run
from agent.delivery.history import FailingItems
from agent.delivery.outcome import DestinationState as Signals
from agent.delivery.outcome import decide, needs_probe
from agent.delivery.prepare import Preparer
from agent.delivery.record import Recorder, failure_of
from agent.delivery.send import Send
from agent.delivery.state import THROTTLED, Destination
from agent.ledger import Claimed, Ledger, Outbox

log = logging.getLogger(__name__)


class Attempts:
    """Takes a claimed item (or a run's items) from its message to its recorded outcome.

    Whatever one item raises while we prepare, encode or send it is judged as its attempt (the
    outcome table), except the local store failing and shutdown, which are nobody's attempt:
    the item goes back in its place (put_back).
    """

    def __init__(
        self,
        destination: Destination,
        outbox: Outbox,
        ledger: Ledger,
        settings: DeliverySettings,
        *,
        prepare: Preparer,
        send: Send,
        failing: FailingItems,
        record: Recorder,
        bulk: BulkContacts | None = None,
    ) -> None:
        self._destination = destination
        self._outbox = outbox
        self._ledger = ledger
        self._settings = settings
        self.prepare, self.send, self.record = prepare, send, record
        self._failing = failing
        self._bulk = bulk
        self._stranded: list[Claimed] = []  # claimed, and the store could not take them back

    def deliver(self, claimed: Claimed) -> None:
        """Prepare and send one item now, then record what decide() gives for what happened."""
        message = self.prepared(claimed)
        if message is None:
            return
        try:
            result = self.send.send(message)
        except (StorageError, StoppingError):
            raise
        except Exception as exc:  # this item's attempt failed, for whatever reason
            self.settle(claimed, exc)
            return
        self.succeeded(claimed, message, result)

    def prepared(self, claimed: Claimed) -> models.OutboundMessage | None:
        """The message to send; None when the item was settled here (nothing this cloud
        counts has changed: delivered; or it cannot be prepared: its outcome recorded)."""
        try:
            message = self.prepare.message(claimed)
            if message is None:
                self.record.delivered(claimed)
            return message
        except (StorageError, StoppingError):
            raise
        except Exception as exc:  # this item's attempt failed, for whatever reason
            self.settle(claimed, exc)
            return None

    def succeeded(self, claimed: Claimed, message: models.OutboundMessage, result: object) -> None:
        """The cloud answered 2xx: recorded, then the wait its rate-limit headers ask for."""
        failpoint("dispatch.after_send")
        cloud_id = getattr(result, "cloud_id", None)
        if claimed.item.get("kind") == "contact" and isinstance(cloud_id, str):
            # A member registered here now has a cloud id: later receipts refer to it by that.
            self._ledger.record_cloud_contact(str(claimed.item["key"]), cloud_id)
        self.record.delivered(claimed, message)
        wait = budget.wait_asked(result)
        if wait is not None:
            self._destination.pause(wait)

    def settle(self, claimed: Claimed, error: BaseException) -> None:
        """decide() over the error, the item's history and (when it matters) the probe."""
        signals = Signals(reachable=self.send.reachable() if needs_probe(error) else None)
        outcome = decide(error, self._failing.history(claimed.item), signals, self._settings)
        failure = failure_of(error, new_error_id())
        if outcome.charged:
            self._failing.charge(claimed.item, outcome.attempts)
            if not isinstance(error, CloudError | UnsendableError):
                log.error(  # not an error we expect: its traceback, for whoever fixes it
                    "an item of %s failed in the agent",
                    self._destination.name,
                    exc_info=error,
                    extra={"errorId": failure.error_id},
                )
        self.record.apply(claimed, outcome, error, failure)

    # -- a run of contact changes (agent/delivery/bulk.py) --------------------------------

    def deliver_run(self, head: Claimed) -> None:
        """A run of contact changes through the bulk endpoint; per-item outcomes applied."""
        assert self._bulk is not None
        self.apply_run(self._bulk.deliver(head))

    def apply_run(self, run: Run) -> None:
        """What became of each item of a run: acked, released, sent alone, or charged."""
        if run.alone is not None:
            self.deliver(run.alone)
        for claimed, cloud_id in run.delivered:
            if cloud_id is not None:
                self._ledger.record_cloud_contact(str(claimed.item["key"]), cloud_id)
            self.record.delivered(claimed)
        for claimed in run.untouched + run.single:  # a single one goes alone on the next pass
            self._outbox.release(claimed)
        if run.pause is not None:
            self._destination.pause(run.pause[0])
            self._destination.report(THROTTLED, run.pause[1])
        if run.error is not None and run.blamed is not None:
            self.settle(run.blamed, run.error)

    # -- back in its place ----------------------------------------------------------------

    def release(self, claimed: Claimed) -> None:
        """Back in its place, uncharged (the queue's own release: a store failing raises)."""
        self._outbox.release(claimed)

    def put_back(self, claimed: Claimed) -> None:
        """The item goes back in its place; a store that cannot take it: again next step."""
        try:
            with contextlib.suppress(NotFoundError):
                self._outbox.release(claimed)
        except StorageError:
            self._stranded.append(claimed)  # a full or failing disk: again next step

    def release_stranded(self) -> None:
        """Put back what a failing store kept claimed; StorageError: still failing, next step."""
        while self._stranded:
            with contextlib.suppress(NotFoundError):
                self._outbox.release(self._stranded[0])
            self._stranded.pop(0)
