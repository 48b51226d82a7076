"""Contact changes through a cloud's bulk endpoint: a run of queued contacts in one call.

bulkcalls.py makes the run's requests; see docs/decisions/0007-bulk-contacts-learn-ids-by-
lookup.md for why cloud ids are learnt by looking each created contact up by its secondary key.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import msgspec

from agent.core import models
from agent.core.errors import KeyStoreError
from agent.core.ratelimit import RateBudget
from agent.delivery.bulkcalls import (
    BulkCalls,
    BulkSettings,
    BulkWriter,
    Entry,
    Run,
    Ticket,
    ticket_of,
)
from agent.ledger import Claimed, Ledger, Outbox, marks

__all__ = ["BulkContacts", "BulkSettings", "BulkWriter", "Run"]

log = logging.getLogger(__name__)


class BulkContacts:
    """Claims a run of contact changes at the head of a queue and sends it in bulk calls.

    A run is the head and the contact changes right behind it, in queue order; a receipt, or
    a contact that cannot go in bulk, ends it. An item singled out by a run (refused, not
    found after a create) is sent alone from then on, with its own outcome.
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
        self._outbox = outbox
        self._ledger = ledger
        self.settings = settings
        self.wait = wait or _sleep  # returns True when the worker is stopping
        self._calls = BulkCalls(
            destination,
            writer,
            outbox,
            settings,
            budget=budget,
            wait=lambda seconds: self.wait(seconds),  # the worker sets wait after it is built
            monotonic=monotonic,
        )
        self._single: set[Ticket] = set()
        marks.ensure_table(outbox)

    # -- which items ---------------------------------------------------------------------

    def takes(self, claimed: Claimed) -> bool:
        """A contact change not singled out: the start of a run."""
        return claimed.item.kind == "contact" and ticket_of(claimed) not in self._single

    def settled(self, claimed: Claimed) -> None:
        """An item sent alone has been delivered or dead-lettered: forget it."""
        self._single.discard(ticket_of(claimed))

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

    def _claim_run(self, head: Claimed, run: Run) -> list[Entry]:
        """The head and the contacts right behind it, in queue order, up to max_contacts."""
        contact = self._contact(head)
        if contact is None:
            run.alone = head
            return []
        entries = [Entry(head, contact)]
        while len(entries) < self.settings.max_contacts:
            nxt = self._outbox.claim(self.destination, timeout_seconds=0)
            if nxt is None:
                break
            contact = self._contact(nxt)
            if contact is None:
                self._outbox.release(nxt)  # a receipt (or a loner) ends the run, in its place
                break
            entries.append(Entry(nxt, contact))
        if len(entries) < self.settings.min_contacts:
            run.alone = head  # too few to be worth a bulk call (it costs two at least)
            run.untouched += [e.claimed for e in entries[1:]]
            return []
        return entries

    # -- one run -------------------------------------------------------------------------

    def deliver(self, head: Claimed) -> Run:
        """Send the run that starts at head; the caller acks, releases and retries per item."""
        run, entries = self.gather(head)
        return self.send(run, entries) if entries else run

    def gather(self, head: Claimed) -> tuple[Run, list[Entry]]:
        """Claim the run that starts at head (no entries: the head goes alone, see Run)."""
        run = Run()
        return run, self._claim_run(head, run)

    def keys(self, entries: list[Entry]) -> set[str]:
        """The record keys of a gathered run's contacts."""
        return {e.claimed.item.key for e in entries}

    def identities(self, entries: list[Entry]) -> set[str]:
        """Who a gathered run's contacts are (cloud id, email, phone), as digests: changes to
        one contact in two runs must not be in flight at once."""
        found = set()
        for entry in entries:
            contact = entry.contact
            for value in (contact.contact_id, contact.email, contact.mobile_phone):
                if value:
                    found.add(hashlib.sha256(value.encode()).hexdigest()[:20])
        return found

    def send(self, run: Run, entries: list[Entry]) -> Run:
        """Send a gathered run (on any thread); the caller applies what became of each item."""
        try:
            self._calls.send(entries, run)
        except BaseException:
            run.untouched += [e.claimed for e in entries[1:]]  # dispatch puts the head back
            for claimed in run.untouched:
                self._outbox.release(claimed)
            raise
        finally:
            self._single.update(ticket_of(c) for c in run.single)  # alone from now on
        settled = {ticket_of(c) for c, _ in run.delivered} | {ticket_of(c) for c in run.single}
        self._calls.unmark([e for e in entries if ticket_of(e.claimed) in settled])
        leftover = [e.claimed for e in entries if ticket_of(e.claimed) not in settled]
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


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False
