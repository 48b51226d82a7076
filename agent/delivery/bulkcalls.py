"""The requests of one bulk run of contact changes: create and learn the ids, update, in budget.

See docs/decisions/0007-bulk-contacts-learn-ids-by-lookup.md for why cloud ids are learnt by
looking each created contact up by its secondary key, and how a retry never creates twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.connectors.base import never_sent
from agent.core import models
from agent.core.errors import AuthError, CloudError, RejectedError, RetryableError, ThrottledError
from agent.core.ratelimit import RateBudget, Verdict
from agent.ledger import Claimed, Outbox, marks

log = logging.getLogger(__name__)

# Engage's bulk status report is undocumented. A batch is finished when its status is one of
# FINISHED, or (an unknown word) when its counts account for every row; anything else is
# still in progress and is polled again, within status_timeout_seconds.
IN_PROGRESS = frozenset({"new", "pending", "queued", "processing", "running", "inprogress"})
FINISHED = frozenset(
    {"completed", "complete", "finished", "done", "succeeded", "success", "failed", "error"}
)
Ticket = tuple[str, int]


class BulkWriter(Protocol):
    """What bulk delivery needs of a connector (Engage's contacts/bulk and contacts/id)."""

    def bulk_write(
        self, contacts: Sequence[models.Contact], *, update: bool = False
    ) -> list[str]: ...

    def bulk_status(self, batch_id: str) -> dict[str, Any]: ...

    def find_contact_id(self, *, email: str | None, mobile_phone: str | None) -> str | None: ...


@dataclass(frozen=True)
class BulkSettings:
    """How many contacts go in one call, from how many on, and how long a batch may take."""

    max_contacts: int = 4000
    min_contacts: int = 3
    status_poll_seconds: float = 0.5
    status_timeout_seconds: float = 60.0
    lookups_at_once: int = 1  # after a create, the ids looked up this many at once
    spaced: bool = False  # beside a window of sends in flight: spent as they are (ratelimit)


@dataclass
class Run:
    """What became of a run of claimed contacts: every item ends in exactly one place."""

    delivered: list[tuple[Claimed, str | None]] = field(default_factory=list)  # with cloud id
    single: list[Claimed] = field(default_factory=list)  # to be sent alone: their own outcome
    alone: Claimed | None = None  # the head, to be sent alone right now (no run behind it)
    untouched: list[Claimed] = field(default_factory=list)  # back in their place as they were
    error: CloudError | None = None  # what stopped the run; it is charged to `blamed`
    blamed: Claimed | None = None
    pause: tuple[float, str] | None = None  # the rate budget ran out: (seconds, why)
    calls: int = 0  # requests made for this run


@dataclass
class Entry:
    """One contact change of a run: its queue item and the contact it sends."""

    claimed: Claimed
    contact: models.Contact


class _OutOfBudgetError(Exception):
    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds, self.reason = seconds, reason


class BulkCalls:
    """Sends a gathered run: creates in one POST, updates (the cloud id known) in one PATCH.

    After a create the new ids are learnt by a lookup per contact, which is also that
    contact's own outcome. Before a create is sent, its items are marked (agent/ledger/marks.py,
    in the queue's own file), so an item that may already have gone out is looked up, never
    created a second time. Every request is charged to the rate budget first.
    """

    def __init__(
        self,
        destination: str,
        writer: BulkWriter,
        outbox: Outbox,
        settings: BulkSettings,
        *,
        budget: RateBudget | None = None,
        wait: Callable[[float], bool],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._destination = destination
        self._writer = writer
        self._outbox = outbox
        self._settings = settings
        self._budget = budget
        self._wait = wait  # returns True when the worker is stopping
        self._monotonic = monotonic

    def send(self, entries: list[Entry], run: Run) -> None:
        """Creates in one call, then updates in one call; what stops the run is recorded."""
        creates = [e for e in entries if not e.contact.contact_id]
        updates = [e for e in entries if e.contact.contact_id]
        try:
            if creates:
                self._create(creates, run)
            if updates:
                self._update(updates, run)
        except _OutOfBudgetError as exc:
            run.pause = (exc.seconds, exc.reason)
        except CloudError as exc:
            run.error = exc

    def _create(self, entries: list[Entry], run: Run) -> None:
        """Look up what may have gone before, create the rest in one call, then learn the ids."""
        fresh = self._not_created_before(entries, run)
        if not fresh:
            return
        self._mark(fresh)
        try:
            batch_id = self._call(run, lambda: self._writer.bulk_write(_contacts(fresh)))[0]
        except RejectedError:  # the batch as a whole refused: nothing went in, each goes alone
            self.unmark(fresh)
            run.single += [entry.claimed for entry in fresh]
            return
        except (ThrottledError, AuthError):  # refused before any row went in
            self.unmark(fresh)
            raise
        except RetryableError as exc:
            if never_sent(exc):  # the connection was refused (an outage): nothing went in
                self.unmark(fresh)
            raise
        if self._finished(batch_id, run) is None:
            raise RetryableError("bulk create not finished in time", connector=self._destination)
        self._learn_ids(fresh, run)

    def _not_created_before(self, entries: list[Entry], run: Run) -> list[Entry]:
        """The entries to create: those marked (an earlier attempt may have created them) are
        looked up first, several at once; found, they are delivered, never created twice."""
        marked = self._marked(entries)
        maybe = [e for e in entries if ticket_of(e.claimed) in marked]
        looked_up = self._look_up_all(maybe, run)
        answers = {ticket_of(e.claimed): a for e, a in zip(maybe, looked_up, strict=True)}
        fresh = []
        for entry in entries:
            ticket = ticket_of(entry.claimed)
            if ticket not in answers or not self._settled_by(entry, answers[ticket], run):
                fresh.append(entry)
        return fresh

    def _learn_ids(self, fresh: list[Entry], run: Run) -> None:
        """After a create: each contact found is delivered with its id; one not found (its row
        did not go in) or refused goes alone with its own outcome."""
        for entry, answer in zip(fresh, self._look_up_all(fresh, run), strict=True):
            if not self._settled_by(entry, answer, run):
                run.single.append(entry.claimed)  # the row did not go in: alone, own outcome

    def _settled_by(self, entry: Entry, answer: str | BaseException | None, run: Run) -> bool:
        """A lookup's answer: found (delivered with its id) or refused (decided alone): True;
        not found: False; an error that stops the run: raised (those before are settled)."""
        if isinstance(answer, RejectedError):  # a malformed key, or several matches
            run.single.append(entry.claimed)
            return True
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            return False
        run.delivered.append((entry.claimed, answer))
        return True

    def _look_up_all(self, entries: list[Entry], run: Run) -> list[str | BaseException | None]:
        """Each contact's cloud id by its key, lookups_at_once at a time, in the entries' order
        (an error in its place: the caller stops at the first one that is not a refusal)."""

        def look_up(entry: Entry) -> str | BaseException | None:
            try:
                self._spend()
                return self._writer.find_contact_id(
                    email=entry.contact.email, mobile_phone=entry.contact.mobile_phone
                )
            except Exception as exc:  # in its place, judged in order by the caller
                return exc

        run.calls += len(entries)
        at_once = max(1, min(self._settings.lookups_at_once, len(entries)))
        if at_once == 1:
            return [look_up(entry) for entry in entries]
        with ThreadPoolExecutor(at_once, thread_name_prefix=f"lookup-{self._destination}") as pool:
            return list(pool.map(look_up, entries))

    def _update(self, entries: list[Entry], run: Run) -> None:
        """One PATCH; rows the report names as failed are sent alone (an update may repeat)."""
        try:
            batch_id = self._call(
                run, lambda: self._writer.bulk_write(_contacts(entries), update=True)
            )[0]
        except RejectedError:
            run.single += [entry.claimed for entry in entries]
            return
        report = self._finished(batch_id, run)
        if report is None:
            raise RetryableError("bulk update not finished in time", connector=self._destination)
        failed = failed_rows(report, len(entries))
        for index, entry in enumerate(entries):
            if index in failed:
                run.single.append(entry.claimed)
            else:
                run.delivered.append((entry.claimed, entry.contact.contact_id))

    def _finished(self, batch_id: str, run: Run) -> dict[str, Any] | None:
        """The batch's report once the cloud has finished it; None if it took too long."""
        deadline = self._monotonic() + self._settings.status_timeout_seconds
        while True:
            report: dict[str, Any] = self._call(run, lambda: self._writer.bulk_status(batch_id))
            if batch_finished(report):
                return report
            if self._monotonic() >= deadline or self._wait(self._settings.status_poll_seconds):
                return None

    # -- requests within the budget ------------------------------------------------------

    def _call(self, run: Run, request: Callable[[], Any]) -> Any:
        self._spend()
        run.calls += 1
        return request()

    def _spend(self) -> None:
        """Wait for the rate budget before each request; a long wait ends the run."""
        budget, spaced = self._budget, self._settings.spaced
        verdict = Verdict(True) if budget is None else budget.spend(self._wait, spaced=spaced)
        if not verdict.allowed:
            raise _OutOfBudgetError(verdict.wait_seconds, verdict.reason)

    # -- markers: a create that may have gone out ----------------------------------------

    def _marked(self, entries: list[Entry]) -> set[Ticket]:
        keys = {(e.claimed.item.key, e.claimed.item.revision): e for e in entries}
        found = marks.marked(self._outbox, self._destination)
        return {ticket_of(keys[mark].claimed) for mark in found if mark in keys}

    def _mark(self, entries: list[Entry]) -> None:
        marks.mark(self._outbox, self._destination, [_mark_of(e) for e in entries])

    def unmark(self, entries: list[Entry]) -> None:
        """These entries are settled: no longer a create that may have gone out."""
        marks.unmark(self._outbox, self._destination, [_mark_of(e) for e in entries])


def _mark_of(entry: Entry) -> marks.Mark:
    return entry.claimed.item.key, entry.claimed.item.revision


def batch_finished(report: dict[str, Any]) -> bool:
    """Whether a status report says the batch is done (see FINISHED); an unknown word counts
    only when the report's counts account for every row."""
    status = str(report.get("status", "")).replace(" ", "").replace("_", "").lower()
    if status in FINISHED:
        return True
    if status in IN_PROGRESS:
        return False
    counts = [report.get(key) for key in ("total", "succeeded", "failed")]
    numbers = [n for n in counts if isinstance(n, int) and not isinstance(n, bool)]
    if len(numbers) == 3 and numbers[1] + numbers[2] == numbers[0]:
        return True
    log.warning("bulk status %r is not a word we know: polled again", status[:40])
    return False


def failed_rows(report: dict[str, Any], rows: int) -> set[int]:
    """Indexes of the rows a batch report names as failed; every row if it counts failures only."""
    failures = report.get("failures")
    if isinstance(failures, list) and all(isinstance(f, dict) for f in failures):
        named = {f.get("index") for f in failures}
        if all(isinstance(i, int) for i in named):
            return {i for i in named if isinstance(i, int)}
    failed = report.get("failed")
    if isinstance(failed, int) and failed == 0:
        return set()
    return set(range(rows))  # no detail: each row is sent alone (an update may repeat)


def _contacts(entries: list[Entry]) -> list[models.Contact]:
    return [e.contact for e in entries]


def ticket_of(claimed: Claimed) -> Ticket:
    return (claimed.lane_queue, claimed.id)
