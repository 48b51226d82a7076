"""Intake: check, seal and fan receipts and contacts out into the outbox, deduplicated.

This package is where everything the till hands over is written: this module takes what the
POS posts (one transaction per receipt or contact, fsync'd before the answer); backfill.py
reads historic receipts from a file into the low-priority lane.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar

import msgspec

from agent.core import crypto, figures, models
from agent.core.config import DestinationSettings, IntakeSettings
from agent.core.crypto import Keyring
from agent.core.errors import InvalidRequestError, NotFoundError, StorageError
from agent.core.failpoints import failpoint
from agent.core.health import FAILING, OK, Health
from agent.core.matchkeys import contact_key_problem, match_key_problem, subject_keys
from agent.ledger import (
    CLAIMED_STATUS,
    LOW_PRIORITY,
    Outbox,
    Transaction,
    encode,
    records,
    schema,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
COUNTERS = (
    "accepted",
    "duplicates",
    "amended",
    "quarantined",
    "totals_warnings",
    "contacts",
    "dead_letters",
)


@dataclass(frozen=True)
class Accepted:
    """What the POS is told: queued, duplicate or amended, and for which destinations."""

    status: Literal["queued", "duplicate", "amended"]
    key: str
    revision: int
    destinations: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    local_id: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A record's queue item made ready outside the transaction (sealed, encoded, hashed)."""

    item: dict[str, Any]
    encoded: bytes  # the item as the queue stores it
    subjects: list[str]  # keyed hashes of the person's email and phone
    facts: figures.Facts | None = None  # a receipt's figures, for reconciliation


@dataclass(frozen=True)
class Delivery:
    destination: str
    revision: int
    state: str
    attempts: int
    next_attempt_at: float | None
    last_error_id: str | None
    cloud_error_id: str | None
    updated_at: float


@dataclass(frozen=True)
class ReceiptState:
    unique_receipt_id: str
    revision: int
    received_at: float
    warnings: tuple[str, ...]
    deliveries: tuple[Delivery, ...] = field(default=())


# GET /v1/receipts?state=...: which delivery states each listed state means.
LISTED_STATES = {"undelivered": ("queued", "retrying"), "dead_lettered": ("dead_lettered",)}


class Intake:
    """The POS-facing write path. Every write is one fsync'd transaction in the outbox file."""

    def __init__(
        self,
        outbox: Outbox,
        keyring: Keyring,
        destinations: Sequence[DestinationSettings],
        settings: IntakeSettings,
        health: Health,
        default_region: str = "SE",
    ) -> None:
        self._region = default_region
        self._outbox = outbox
        self._health = health
        self._keyring = keyring
        self._destinations = tuple(d for d in destinations if d.enabled)
        self._append_only = frozenset(
            d.name for d in self._destinations if d.amends == "difference"
        )
        self._settings = settings
        outbox.migrate(schema.STEPS)

    # -- receipts -------------------------------------------------------------------------

    def put_receipt(self, receipt: models.Receipt, *, low_priority: bool = False) -> Accepted:
        """Queue a receipt for every destination that takes it; dedupe and amend by content.

        low_priority: into each destination's low-priority lane (history backfill), which is
        delivered only while no live sale waits.
        """
        lane = LOW_PRIORITY if low_priority else ""
        self.check_buyer(receipt)
        warnings = check_totals(receipt, self._settings.totals_tolerance)
        if warnings and self._settings.strict_totals:
            raise InvalidRequestError(warnings[0], code="totals_mismatch", path="$.totalGrossPrice")
        content_hash = self._keyring.keyed_hash(msgspec.json.encode(receipt))
        # Sealing, hashing and encoding happen here, before the transaction: under the writer
        # lock only SQL runs, so concurrent sales do not wait on each other's CPU work.
        prepared = self._prepare_receipt(receipt)

        def work(tx: Transaction) -> Accepted:
            accepted = self._put_receipt(tx, receipt, content_hash, warnings, lane, prepared)
            records.bump(tx, _counter_for(accepted.status))
            if warnings:
                records.bump(tx, "totals_warnings")
            failpoint("intake.before_commit")
            return accepted

        accepted = self._write(work)
        failpoint("intake.after_commit")
        return accepted

    def check_buyer(self, receipt: models.Receipt) -> None:
        """A receipt's buyer must be findable: a match key of its type, or a member registered at
        this till; InvalidRequestError (422) with the field otherwise."""
        contact = receipt.contact
        if contact is None:
            return
        if contact.local_id is not None and not self._issued(contact.local_id):
            raise InvalidRequestError(
                "no member was registered at this till under this localId",
                code="unknown_local_id",
                path="$.contact.localId",
            )
        if contact.match_key is not None and contact.match_key_type is not None:
            problem = match_key_problem(contact.match_key_type, contact.match_key, self._region)
            if problem is not None:
                raise InvalidRequestError(
                    problem, code="invalid_match_key", path="$.contact.matchKey"
                )

    def check_contact(self, contact: models.Contact) -> None:
        """A member's email and phone must be ones a cloud can take (422 with the field)."""
        problem = contact_key_problem(
            email=contact.email, mobile_phone=contact.mobile_phone, default_region=self._region
        )
        if problem is not None:
            path, why = problem
            raise InvalidRequestError(why, code="invalid_contact", path=path)

    def _issued(self, local_id: str) -> bool:
        return records.is_issued(self._outbox, local_id)

    def _write(self, work: Callable[[Transaction], T]) -> T:
        """An outbox write whose failure or success is reported on the health board."""
        try:
            result = self._outbox.run(work)
        except StorageError as exc:
            self._health.report("storage", FAILING, f"cannot persist: {exc}")
            raise
        storage = self._health.get("storage")
        if storage is not None and storage.state != OK:
            self._health.report("storage", OK, "durable writes resumed")
        return result

    def _put_receipt(
        self,
        tx: Transaction,
        receipt: models.Receipt,
        content_hash: str,
        warnings: tuple[str, ...],
        lane: str,
        prepared: Prepared,
    ) -> Accepted:
        key = receipt.unique_receipt_id
        latest = records.receipt_revision(tx, key)
        if latest is None:
            return self._first_revision(tx, receipt, content_hash, warnings, lane, prepared)
        if records.known_revision(tx, key, content_hash) is not None:
            return Accepted("duplicate", key, latest, records.delivered_to(tx, key))
        return self._amend(tx, receipt, content_hash, warnings, latest + 1, lane, prepared)

    def _first_revision(
        self,
        tx: Transaction,
        receipt: models.Receipt,
        content_hash: str,
        warnings: tuple[str, ...],
        lane: str,
        prepared: Prepared,
    ) -> Accepted:
        key, now = receipt.unique_receipt_id, time.time()
        records.insert_receipt(tx, key, now, warnings)
        records.record_revision(tx, key, 1, content_hash, now)
        records.insert_subjects(tx, "receipt", key, prepared.subjects)
        targets = self.destinations_for(receipt)
        for destination in targets:
            queue_id = tx.put_encoded(destination + lane, prepared.encoded)
            records.insert_delivery(tx, key, destination, 1, queue_id, now, destination + lane)
        self._record_taken(tx, key, 1, prepared, targets, ())
        return Accepted("queued", key, 1, targets, warnings)

    def _amend(
        self,
        tx: Transaction,
        receipt: models.Receipt,
        content_hash: str,
        warnings: tuple[str, ...],
        revision: int,
        lane: str,
        prepared: Prepared,
    ) -> Accepted:
        key, now = receipt.unique_receipt_id, time.time()
        records.amend_receipt(tx, key, revision, now, warnings)
        records.record_revision(tx, key, revision, content_hash, now)
        records.insert_subjects(tx, "receipt", key, prepared.subjects)
        earlier = records.delivered_to(tx, key)
        targets = tuple(dict.fromkeys((*self.destinations_for(receipt), *earlier)))
        item = {**prepared.item, "revision": revision}
        for destination in targets:
            self._amend_one(tx, key, destination + lane, revision, item, now)
        self._record_taken(tx, key, revision, prepared, targets, earlier)
        return Accepted("amended", key, revision, targets, warnings)

    def _record_taken(
        self,
        tx: Transaction,
        key: str,
        revision: int,
        prepared: Prepared,
        targets: tuple[str, ...],
        earlier: tuple[str, ...],
    ) -> None:
        assert prepared.facts is not None
        records.record_taken(
            tx,
            key,
            revision,
            prepared.facts,
            targets,
            earlier=earlier,
            append_only=self._append_only,
        )

    def _amend_one(
        self,
        tx: Transaction,
        key: str,
        queue: str,
        revision: int,
        item: dict[str, Any],
        now: float,
    ) -> None:
        """Replace the queued revision if it has not left; otherwise queue the new one after it."""
        destination = queue.removesuffix(LOW_PRIORITY)
        waiting = records.waiting_delivery(tx, key, destination)
        if waiting is not None:
            waiting_revision, queue_id, waiting_queue = waiting
            if tx.replace(waiting_queue, queue_id, item):
                records.supersede_delivery(tx, key, destination, waiting_revision, now)
                records.insert_delivery(
                    tx, key, destination, revision, queue_id, now, waiting_queue
                )
                return
        queue_id = tx.put(queue, item)
        records.insert_delivery(tx, key, destination, revision, queue_id, now, queue)

    def _subject_hashes(self, fields: tuple[str | None, str | None]) -> list[str]:
        """Keyed hashes of the person's email and phone, so `forget` can find the record."""
        email, phone = fields
        keys = subject_keys(email=email, mobile_phone=phone, default_region=self._region)
        return [self._keyring.keyed_hash(subject.encode()) for subject in keys]

    def _prepare_receipt(self, receipt: models.Receipt) -> Prepared:
        item = self._receipt_item(receipt, 1)
        subjects = self._subject_hashes(receipt_subject_fields(receipt))
        return Prepared(item, encode(item), subjects, figures.facts_of(receipt))

    def destinations_for(self, receipt: models.Receipt) -> tuple[str, ...]:
        """The enabled destinations that take this receipt (DESIGN §3 routing)."""
        has_contact = receipt.contact is not None
        return tuple(
            d.name
            for d in self._destinations
            if "receipts" in d.takes or (has_contact and "receipts_with_contact" in d.takes)
        )

    def _receipt_item(self, receipt: models.Receipt, revision: int) -> dict[str, Any]:
        key = receipt.unique_receipt_id
        body = models.to_builtins(receipt)
        return self._sealed_item("receipt", key, revision, body, models.RECEIPT_PERSONAL_FIELDS)

    def _sealed_item(
        self, kind: str, key: str, revision: int, body: dict[str, Any], personal: Sequence[str]
    ) -> dict[str, Any]:
        """The queue item: business fields in clear, personal fields sealed with the record id."""
        private = {name: body.pop(name) for name in personal if name in body}
        sealed = None
        if private:
            sealed = self._keyring.seal(json.dumps(private).encode(), crypto.record_aad(kind, key))
        return {"kind": kind, "key": key, "revision": revision, "body": body, "personal": sealed}

    # -- contacts -------------------------------------------------------------------------

    def put_contact(self, contact: models.Contact) -> Accepted:
        """Queue a contact change for the destinations that take contacts; dedupe by content."""
        self.check_contact(contact)
        content_hash = self._keyring.keyed_hash(msgspec.json.encode(contact))
        targets = tuple(d.name for d in self._destinations if "contacts" in d.takes)
        local_id = new_local_id()  # unused if this turns out to be a duplicate
        item = self._sealed_item(
            "contact", local_id, 1, models.to_builtins(contact), models.CONTACT_PERSONAL_FIELDS
        )
        prepared = Prepared(
            item, encode(item), self._subject_hashes((contact.email, contact.mobile_phone))
        )
        return self._write(
            lambda tx: self._put_contact(tx, local_id, content_hash, targets, prepared)
        )

    def _put_contact(
        self,
        tx: Transaction,
        local_id: str,
        content_hash: str,
        targets: tuple[str, ...],
        prepared: Prepared,
    ) -> Accepted:
        known = records.contact_with_content(tx, content_hash)
        if known is not None:
            records.bump(tx, "duplicates")
            return Accepted("duplicate", known, 1, targets, local_id=known)
        now = time.time()
        records.insert_contact(tx, local_id, content_hash, now)
        records.insert_subjects(tx, "contact", local_id, prepared.subjects)
        for destination in targets:
            queue_id = tx.put_encoded(destination, prepared.encoded)
            records.insert_delivery(tx, local_id, destination, 1, queue_id, now)
        records.bump(tx, "contacts")
        return Accepted("queued", local_id, 1, targets, local_id=local_id)

    # -- quarantine -----------------------------------------------------------------------

    def quarantine(self, error_id: str, route: str, body: bytes, code: str, reason: str) -> str:
        """Keep a body that parsed but failed validation, sealed, for a technician to fix;
        returns the errorId it is kept under.

        One copy per distinct body: the same body again is counted on the first copy and its
        errorId given back. The kept bodies have their own cap (storage.quarantine_max_mb),
        the oldest going first past it, so refused bodies can never fill the store a sale
        needs.
        """
        digest = self._keyring.keyed_hash(route.encode() + b"\0" + body)
        fields = body_subject_fields(body)
        # A body nested too deep to read is not kept: no one could fix it, and `forget` could
        # not find a person in it. The record of the refusal is kept all the same.
        sealed = (
            None
            if fields is None
            else self._keyring.seal(body, crypto.record_aad("quarantine", error_id))
        )
        subjects = self._subject_hashes(fields or (None, None))

        def work(tx: Transaction) -> str:
            records.bump(tx, "quarantined")
            now = time.time()
            kept = records.quarantine_again(tx, digest, now)
            if kept is not None:
                return kept
            refused = (route, code, safe_reason(reason))
            records.insert_quarantine(tx, error_id, now, refused, sealed, digest)
            records.insert_subjects(tx, "quarantine", error_id, subjects)
            records.evict_quarantine(tx, self._settings.quarantine_max_bytes, error_id)
            return error_id

        return self._write(work)

    # -- reads ----------------------------------------------------------------------------

    def receipt_state(self, unique_receipt_id: str) -> ReceiptState:
        found = records.receipt(self._outbox, unique_receipt_id)
        if found is None:
            raise NotFoundError(f"no receipt {unique_receipt_id!r} was handed to this till")
        (revision, received_at, warnings), rows = found
        deliveries = tuple(self._delivery(r) for r in rows)
        return ReceiptState(unique_receipt_id, revision, received_at, warnings, deliveries)

    def list_receipts(
        self, state: str, since: float, after: tuple[float, str] | None, limit: int
    ) -> tuple[list[ReceiptState], tuple[float, str] | None]:
        """Receipts received at or after `since` with a delivery in `state` ("undelivered":
        queued, being sent or retrying; "dead_lettered"), oldest first, `limit` at a time after
        the (received_at, id) cursor `after`; the cursor of the next page, or None."""
        wanted = LISTED_STATES[state]
        cursor = after or (since, "")
        rows = records.receipts_in_states(self._outbox, wanted, since, cursor, limit + 1)
        page = [self.receipt_state(row[0]) for row in rows[:limit]]
        more = len(rows) > limit
        return page, ((rows[limit - 1][1], rows[limit - 1][0]) if more else None)

    def _delivery(self, row: tuple[Any, ...]) -> Delivery:
        state = row[2]
        if state == "queued" and self._outbox.queue_status(row[9], row[8]) == CLAIMED_STATUS:
            state = "sending"
        return Delivery(row[0], row[1], state, row[3], row[4], row[5], row[6], row[7])

    def pending_contacts(self, kind: str, value: str) -> list[tuple[str, str | None]]:
        """(local id, cloud id or None) of members registered here under this email or phone."""
        keys = subject_keys(
            email=value if kind == "email" else None,
            mobile_phone=value if kind == "phone" else None,
            default_region=self._region,
        )
        if not keys:
            return []
        subject = self._keyring.keyed_hash(keys[0].encode())
        return records.contacts_of_subject(self._outbox, subject)

    def counters(self) -> dict[str, int]:
        kept = records.counters(self._outbox)
        return {name: kept.get(name, 0) for name in COUNTERS}


def check_totals(receipt: models.Receipt, tolerance: Decimal) -> tuple[str, ...]:
    """Warnings when lines, total and payments disagree by more than the tolerance."""
    lines = sum((line_amount(item) for item in receipt.items), Decimal(0))
    payments = sum((p.value for p in receipt.payment_methods), Decimal(0))
    total = receipt.total_gross_price
    warnings = []
    if abs(lines - total) > tolerance:
        warnings.append(f"items add up to {lines}, totalGrossPrice is {total}")
    if abs(payments - total) > tolerance:
        warnings.append(f"payments add up to {payments}, totalGrossPrice is {total}")
    return tuple(warnings)


def safe_reason(reason: str) -> str:
    """A validation message without the values it quotes (a value may be personal data)."""
    return _QUOTED.sub("[value]", reason)[:500]


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def receipt_subject_fields(receipt: models.Receipt) -> tuple[str | None, str | None]:
    """(email, phone) of the receipt's buyer when the match key is one of those."""
    contact = receipt.contact
    if contact is None or contact.match_key is None:
        return None, None
    if contact.match_key_type == "email":
        return contact.match_key, None
    if contact.match_key_type == "mobilePhone":
        return None, contact.match_key
    return None, None


def body_subject_fields(body: bytes) -> tuple[str | None, str | None] | None:
    """Best effort on a refused body: its email and phone wherever a receipt or contact has
    them; None when it is nested too deep to read at all."""
    try:
        parsed = json.loads(body)
    except RecursionError:
        return None
    except ValueError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    email, phone = _text(parsed.get("email")), _text(parsed.get("mobilePhone"))
    contact = parsed.get("contact")
    if isinstance(contact, dict):
        key = _text(contact.get("matchKey"))
        email = email or (key if key and "@" in key else None)
        phone = phone or (key if key and "@" not in key else None)
    return email, phone


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def line_amount(item: models.ReceiptItem) -> Decimal:
    """A line's signed contribution: a RETURN's price is positive on the wire but refunds."""
    if item.type == "RETURN":
        return -abs(item.gross_paid_price)
    return item.gross_paid_price


def new_local_id() -> str:
    return f"loc_{secrets.token_hex(12)}"


def _counter_for(status: str) -> str:
    return {"queued": "accepted", "duplicate": "duplicates", "amended": "amended"}[status]
