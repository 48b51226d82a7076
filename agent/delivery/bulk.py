"""Contact changes through a cloud's bulk endpoint: a run of queued contacts in one call.

See docs/decisions/0007-bulk-contacts-learn-ids-by-lookup.md for why cloud ids are learnt by
looking each created contact up by its secondary key, and how a retry never creates twice.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from agent.connectors.base import never_sent
from agent.core import models
from agent.core.errors import (
    AuthError,
    CloudError,
    KeyStoreError,
    RejectedError,
    RetryableError,
    ThrottledError,
)
from agent.core.ratelimit import RateBudget, Verdict
from agent.ledger import Claimed, Ledger, Outbox, marks

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
class _Entry:
    claimed: Claimed
    contact: models.Contact


class _OutOfBudgetError(Exception):
    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds, self.reason = seconds, reason


class BulkContacts:
    """Claims a run of contact changes at the head of a queue and sends it in bulk calls.

    Creates go in one POST, updates (the cloud id known) in one PATCH. After a create the new
    ids are learnt by a lookup per contact, which is also that contact's own outcome. Before a
    create is sent, its items are marked in `bulk_sent` (same transaction file as the queue), so
    an item that may already have gone out is looked up, never created a second time.
    """

    def __init__(
        self,
        destination: str,
        writer: BulkWriter,
        outbox: Outbox,
        ledger: Ledger,
        settings: BulkSettings,
        *,
        budget: RateBudget | None = None,
        wait: Callable[[float], bool] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.destination = destination
        self._writer = writer
        self._outbox = outbox
        self._ledger = ledger
        self.settings = settings
        self._budget = budget
        self.wait = wait or _sleep  # returns True when the worker is stopping
        self._monotonic = monotonic
        self._single: set[Ticket] = set()
        marks.ensure_table(outbox)

    # -- which items ---------------------------------------------------------------------

    def takes(self, claimed: Claimed) -> bool:
        """A contact change not singled out: the start of a run."""
        return claimed.item.kind == "contact" and _ticket(claimed) not in self._single

    def settled(self, claimed: Claimed) -> None:
        """An item sent alone has been delivered or dead-lettered: forget it."""
        self._single.discard(_ticket(claimed))

    def _contact(self, claimed: Claimed) -> models.Contact | None:
        """The contact if it can go in bulk: readable, and an update or findable by a key."""
        if not self.takes(claimed):
            return None
        try:
            contact = self._ledger.message_for(claimed.item).contact
        except (msgspec.ValidationError, KeyStoreError, KeyError, TypeError):
            return None  # sent alone, dispatch dead-letters it with the reason
        if contact is None or not (contact.contact_id or contact.email or contact.mobile_phone):
            return None
        return contact

    def _claim_run(self, head: Claimed, run: Run) -> list[_Entry]:
        """The head and the contacts right behind it, in queue order, up to max_contacts."""
        contact = self._contact(head)
        if contact is None:
            run.alone = head
            return []
        entries = [_Entry(head, contact)]
        while len(entries) < self.settings.max_contacts:
            nxt = self._outbox.claim(self.destination, timeout_seconds=0)
            if nxt is None:
                break
            contact = self._contact(nxt)
            if contact is None:
                self._outbox.release(nxt)  # a receipt (or a loner) ends the run, in its place
                break
            entries.append(_Entry(nxt, contact))
        if len(entries) < self.settings.min_contacts:
            run.alone = head  # too few to be worth a bulk call (it costs two at least)
            run.untouched += [e.claimed for e in entries[1:]]
            return []
        return entries

    def _single_out(self, claimed: Claimed, run: Run) -> None:
        self._single.add(_ticket(claimed))
        run.single.append(claimed)

    # -- one run -------------------------------------------------------------------------

    def deliver(self, head: Claimed) -> Run:
        """Send the run that starts at head; the caller acks, releases and retries per item."""
        run, entries = self.gather(head)
        return self.send(run, entries) if entries else run

    def gather(self, head: Claimed) -> tuple[Run, list[_Entry]]:
        """Claim the run that starts at head (no entries: the head goes alone, see Run)."""
        run = Run()
        return run, self._claim_run(head, run)

    def keys(self, entries: list[_Entry]) -> set[str]:
        """The record keys of a gathered run's contacts."""
        return {e.claimed.item.key for e in entries}

    def identities(self, entries: list[_Entry]) -> set[str]:
        """Who a gathered run's contacts are (cloud id, email, phone), as digests: changes to
        one contact in two runs must not be in flight at once."""
        found = set()
        for entry in entries:
            contact = entry.contact
            for value in (contact.contact_id, contact.email, contact.mobile_phone):
                if value:
                    found.add(hashlib.sha256(value.encode()).hexdigest()[:20])
        return found

    def send(self, run: Run, entries: list[_Entry]) -> Run:
        """Send a gathered run (on any thread); the caller applies what became of each item."""
        try:
            self._send(entries, run)
        except BaseException:
            run.untouched += [e.claimed for e in entries[1:]]  # dispatch puts the head back
            for claimed in run.untouched:
                self._outbox.release(claimed)
            raise
        settled = {_ticket(c) for c, _ in run.delivered} | {_ticket(c) for c in run.single}
        self._unmark([e for e in entries if _ticket(e.claimed) in settled])
        leftover = [e.claimed for e in entries if _ticket(e.claimed) not in settled]
        if run.error is not None and leftover:
            run.blamed, leftover = leftover[0], leftover[1:]
        run.untouched += leftover
        log.info(
            "bulk run to %s: %d contacts, %d delivered, %d sent alone, %d calls",
            self.destination,
            len(entries),
            len(run.delivered),
            len(run.single),
            run.calls,
        )
        return run

    def _send(self, entries: list[_Entry], run: Run) -> None:
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

    def _create(self, entries: list[_Entry], run: Run) -> None:
        """Look up what may have gone before, create the rest in one call, then learn the ids."""
        fresh = self._not_created_before(entries, run)
        if not fresh:
            return
        self._mark(fresh)
        try:
            batch_id = self._call(run, lambda: self._writer.bulk_write(_contacts(fresh)))[0]
        except RejectedError:  # the batch as a whole refused: nothing went in, each goes alone
            self._unmark(fresh)
            for entry in fresh:
                self._single_out(entry.claimed, run)
            return
        except (ThrottledError, AuthError):  # refused before any row went in
            self._unmark(fresh)
            raise
        except RetryableError as exc:
            if never_sent(exc):  # the connection was refused (an outage): nothing went in
                self._unmark(fresh)
            raise
        if self._finished(batch_id, run) is None:
            raise RetryableError("bulk create not finished in time", connector=self.destination)
        self._learn_ids(fresh, run)

    def _not_created_before(self, entries: list[_Entry], run: Run) -> list[_Entry]:
        """The entries to create: those marked (an earlier attempt may have created them) are
        looked up first, several at once; found, they are delivered, never created twice."""
        marked = self._marked(entries)
        maybe = [e for e in entries if _ticket(e.claimed) in marked]
        looked_up = self._look_up_all(maybe, run)
        answers = {_ticket(e.claimed): a for e, a in zip(maybe, looked_up, strict=True)}
        fresh = []
        for entry in entries:
            ticket = _ticket(entry.claimed)
            if ticket not in answers or not self._settled_by(entry, answers[ticket], run):
                fresh.append(entry)
        return fresh

    def _learn_ids(self, fresh: list[_Entry], run: Run) -> None:
        """After a create: each contact found is delivered with its id; one not found (its row
        did not go in) or refused goes alone with its own outcome."""
        for entry, answer in zip(fresh, self._look_up_all(fresh, run), strict=True):
            if not self._settled_by(entry, answer, run):
                self._single_out(entry.claimed, run)  # the row did not go in: alone, own outcome

    def _settled_by(self, entry: _Entry, answer: str | BaseException | None, run: Run) -> bool:
        """A lookup's answer: found (delivered with its id) or refused (decided alone): True;
        not found: False; an error that stops the run: raised (those before are settled)."""
        if isinstance(answer, RejectedError):  # a malformed key, or several matches
            self._single_out(entry.claimed, run)
            return True
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            return False
        run.delivered.append((entry.claimed, answer))
        return True

    def _look_up_all(self, entries: list[_Entry], run: Run) -> list[str | BaseException | None]:
        """Each contact's cloud id by its key, lookups_at_once at a time, in the entries' order
        (an error in its place: the caller stops at the first one that is not a refusal)."""

        def look_up(entry: _Entry) -> str | BaseException | None:
            try:
                self._spend()
                return self._writer.find_contact_id(
                    email=entry.contact.email, mobile_phone=entry.contact.mobile_phone
                )
            except Exception as exc:  # in its place, judged in order by the caller
                return exc

        run.calls += len(entries)
        at_once = max(1, min(self.settings.lookups_at_once, len(entries)))
        if at_once == 1:
            return [look_up(entry) for entry in entries]
        with ThreadPoolExecutor(at_once, thread_name_prefix=f"lookup-{self.destination}") as pool:
            return list(pool.map(look_up, entries))

    def _update(self, entries: list[_Entry], run: Run) -> None:
        """One PATCH; rows the report names as failed are sent alone (an update may repeat)."""
        try:
            batch_id = self._call(
                run, lambda: self._writer.bulk_write(_contacts(entries), update=True)
            )[0]
        except RejectedError:
            for entry in entries:
                self._single_out(entry.claimed, run)
            return
        report = self._finished(batch_id, run)
        if report is None:
            raise RetryableError("bulk update not finished in time", connector=self.destination)
        failed = failed_rows(report, len(entries))
        for index, entry in enumerate(entries):
            if index in failed:
                self._single_out(entry.claimed, run)
            else:
                run.delivered.append((entry.claimed, entry.contact.contact_id))

    def _finished(self, batch_id: str, run: Run) -> dict[str, Any] | None:
        """The batch's report once the cloud has finished it; None if it took too long."""
        deadline = self._monotonic() + self.settings.status_timeout_seconds
        while True:
            report: dict[str, Any] = self._call(run, lambda: self._writer.bulk_status(batch_id))
            if batch_finished(report):
                return report
            if self._monotonic() >= deadline or self.wait(self.settings.status_poll_seconds):
                return None

    # -- requests within the budget ------------------------------------------------------

    def _call(self, run: Run, request: Callable[[], Any]) -> Any:
        self._spend()
        run.calls += 1
        return request()

    def _spend(self) -> None:
        """Wait for the rate budget before each request; a long wait ends the run."""
        budget, spaced = self._budget, self.settings.spaced
        verdict = Verdict(True) if budget is None else budget.spend(self.wait, spaced=spaced)
        if not verdict.allowed:
            raise _OutOfBudgetError(verdict.wait_seconds, verdict.reason)

    # -- markers: a create that may have gone out ----------------------------------------

    def _marked(self, entries: list[_Entry]) -> set[Ticket]:
        keys = {(e.claimed.item.key, e.claimed.item.revision): e for e in entries}
        found = marks.marked(self._outbox, self.destination)
        return {_ticket(keys[mark].claimed) for mark in found if mark in keys}

    def _mark(self, entries: list[_Entry]) -> None:
        marks.mark(self._outbox, self.destination, [_mark_of(e) for e in entries])

    def _unmark(self, entries: list[_Entry]) -> None:
        marks.unmark(self._outbox, self.destination, [_mark_of(e) for e in entries])


def _mark_of(entry: _Entry) -> marks.Mark:
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


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def _contacts(entries: list[_Entry]) -> list[models.Contact]:
    return [e.contact for e in entries]


def _ticket(claimed: Claimed) -> Ticket:
    return (claimed.lane_queue, claimed.id)
