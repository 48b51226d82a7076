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
import sqlite3
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
from agent.ledger import schema, takings
from agent.ledger.outbox import BULK, CLAIMED_STATUS, Batch, Outbox, encode

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
        lane = BULK if low_priority else ""
        self.check_buyer(receipt)
        warnings = check_totals(receipt, self._settings.totals_tolerance)
        if warnings and self._settings.strict_totals:
            raise InvalidRequestError(warnings[0], code="totals_mismatch", path="$.totalGrossPrice")
        content_hash = self._keyring.keyed_hash(msgspec.json.encode(receipt))
        # Sealing, hashing and encoding happen here, before the transaction: under the writer
        # lock only SQL runs, so concurrent sales do not wait on each other's CPU work.
        prepared = self._prepare_receipt(receipt)

        def work(batch: Batch) -> Accepted:
            accepted = self._put_receipt(batch, receipt, content_hash, warnings, lane, prepared)
            _bump(batch.conn, _counter_for(accepted.status))
            if warnings:
                _bump(batch.conn, "totals_warnings")
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
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM outbound_contacts WHERE local_id = ?", (local_id,)
            ).fetchone()
        return row is not None

    def _write(self, work: Callable[[Batch], T]) -> T:
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
        batch: Batch,
        receipt: models.Receipt,
        content_hash: str,
        warnings: tuple[str, ...],
        lane: str,
        prepared: Prepared,
    ) -> Accepted:
        key = receipt.unique_receipt_id
        row = batch.conn.execute(
            "SELECT revision FROM receipts WHERE unique_receipt_id = ?", (key,)
        ).fetchone()
        if row is None:
            return self._first_revision(batch, receipt, content_hash, warnings, lane, prepared)
        if _known_revision(batch.conn, key, content_hash) is not None:
            return Accepted("duplicate", key, int(row[0]), self._delivered_to(batch.conn, key))
        revision = int(row[0]) + 1
        return self._amend(batch, receipt, content_hash, warnings, revision, lane, prepared)

    def _first_revision(
        self,
        batch: Batch,
        receipt: models.Receipt,
        content_hash: str,
        warnings: tuple[str, ...],
        lane: str,
        prepared: Prepared,
    ) -> Accepted:
        key, now = receipt.unique_receipt_id, time.time()
        batch.conn.execute(
            "INSERT INTO receipts VALUES (?, 1, ?, ?, ?)", (key, now, now, json.dumps(warnings))
        )
        _record_revision(batch.conn, key, 1, content_hash, now)
        _insert_subjects(batch.conn, "receipt", key, prepared.subjects)
        targets = self.destinations_for(receipt)
        for destination in targets:
            queue_id = batch.put_encoded(destination + lane, prepared.encoded)
            _insert_delivery(batch.conn, key, destination, 1, queue_id, now, destination + lane)
        self._record_taken(batch, key, 1, prepared, targets, ())
        return Accepted("queued", key, 1, targets, warnings)

    def _amend(
        self,
        batch: Batch,
        receipt: models.Receipt,
        content_hash: str,
        warnings: tuple[str, ...],
        revision: int,
        lane: str,
        prepared: Prepared,
    ) -> Accepted:
        key, now = receipt.unique_receipt_id, time.time()
        batch.conn.execute(
            "UPDATE receipts SET revision = ?, updated_at = ?, warnings = ? "
            "WHERE unique_receipt_id = ?",
            (revision, now, json.dumps(warnings), key),
        )
        _record_revision(batch.conn, key, revision, content_hash, now)
        _insert_subjects(batch.conn, "receipt", key, prepared.subjects)
        earlier = self._delivered_to(batch.conn, key)
        targets = tuple(dict.fromkeys((*self.destinations_for(receipt), *earlier)))
        item = {**prepared.item, "revision": revision}
        for destination in targets:
            self._amend_one(batch, key, destination + lane, revision, item, now)
        self._record_taken(batch, key, revision, prepared, targets, earlier)
        return Accepted("amended", key, revision, targets, warnings)

    def _record_taken(
        self,
        batch: Batch,
        key: str,
        revision: int,
        prepared: Prepared,
        targets: tuple[str, ...],
        earlier: tuple[str, ...],
    ) -> None:
        assert prepared.facts is not None
        takings.record_taken(
            batch.conn,
            key,
            revision,
            prepared.facts,
            targets,
            earlier=earlier,
            append_only=self._append_only,
        )

    def _amend_one(
        self,
        batch: Batch,
        key: str,
        queue: str,
        revision: int,
        item: dict[str, Any],
        now: float,
    ) -> None:
        """Replace the queued revision if it has not left; otherwise queue the new one after it."""
        destination = queue.removesuffix(BULK)
        waiting = batch.conn.execute(
            "SELECT revision, queue_id, COALESCE(queue, destination) FROM deliveries "
            "WHERE record_key = ? AND destination = ? AND state IN ('queued', 'retrying') "
            "ORDER BY revision DESC LIMIT 1",
            (key, destination),
        ).fetchone()
        if waiting is not None and batch.replace(waiting[2], int(waiting[1]), item):
            batch.conn.execute(
                "UPDATE deliveries SET state = 'superseded', updated_at = ? "
                "WHERE record_key = ? AND destination = ? AND revision = ?",
                (now, key, destination, int(waiting[0])),
            )
            _insert_delivery(
                batch.conn, key, destination, revision, int(waiting[1]), now, waiting[2]
            )
            return
        queue_id = batch.put(queue, item)
        _insert_delivery(batch.conn, key, destination, revision, queue_id, now, queue)

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

    def _delivered_to(self, conn: sqlite3.Connection, key: str) -> tuple[str, ...]:
        rows = conn.execute(
            "SELECT DISTINCT destination FROM deliveries WHERE record_key = ? ORDER BY destination",
            (key,),
        ).fetchall()
        return tuple(r[0] for r in rows)

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
            lambda batch: self._put_contact(batch, local_id, content_hash, targets, prepared)
        )

    def _put_contact(
        self,
        batch: Batch,
        local_id: str,
        content_hash: str,
        targets: tuple[str, ...],
        prepared: Prepared,
    ) -> Accepted:
        row = batch.conn.execute(
            "SELECT local_id FROM outbound_contacts WHERE content_hash = ?", (content_hash,)
        ).fetchone()
        if row is not None:
            _bump(batch.conn, "duplicates")
            return Accepted("duplicate", row[0], 1, targets, local_id=row[0])
        now = time.time()
        batch.conn.execute(
            "INSERT INTO outbound_contacts VALUES (?, ?, ?, NULL)",
            (local_id, content_hash, now),
        )
        _insert_subjects(batch.conn, "contact", local_id, prepared.subjects)
        for destination in targets:
            queue_id = batch.put_encoded(destination, prepared.encoded)
            _insert_delivery(batch.conn, local_id, destination, 1, queue_id, now)
        _bump(batch.conn, "contacts")
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

        def work(batch: Batch) -> str:
            _bump(batch.conn, "quarantined")
            now = time.time()
            kept = batch.conn.execute(
                "SELECT error_id FROM quarantine WHERE content_hash = ? "
                "AND sealed_body IS NOT NULL",
                (digest,),
            ).fetchone()
            if kept is not None:
                batch.conn.execute(
                    "UPDATE quarantine SET times = times + 1, last_at = ? WHERE error_id = ?",
                    (now, kept[0]),
                )
                return str(kept[0])
            batch.conn.execute(
                "INSERT INTO quarantine (error_id, received_at, route, code, reason, "
                "sealed_body, content_hash, times, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (error_id, now, route, code, safe_reason(reason), sealed, digest, now),
            )
            _insert_subjects(batch.conn, "quarantine", error_id, subjects)
            _evict_quarantine(batch.conn, self._settings.quarantine_max_bytes, error_id)
            return error_id

        return self._write(work)

    # -- reads ----------------------------------------------------------------------------

    def receipt_state(self, unique_receipt_id: str) -> ReceiptState:
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT revision, received_at, warnings FROM receipts WHERE unique_receipt_id = ?",
                (unique_receipt_id,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no receipt {unique_receipt_id!r} was handed to this till")
            rows = conn.execute(
                "SELECT destination, revision, state, attempts, next_attempt_at, last_error_id, "
                "cloud_error_id, updated_at, queue_id, COALESCE(queue, destination) "
                "FROM deliveries WHERE record_key = ? "
                "AND state != 'superseded' ORDER BY destination, revision",
                (unique_receipt_id,),
            ).fetchall()
        deliveries = tuple(self._delivery(r) for r in rows)
        return ReceiptState(
            unique_receipt_id, row[0], row[1], tuple(json.loads(row[2])), deliveries
        )

    def list_receipts(
        self, state: str, since: float, after: tuple[float, str] | None, limit: int
    ) -> tuple[list[ReceiptState], tuple[float, str] | None]:
        """Receipts received at or after `since` with a delivery in `state` ("undelivered":
        queued, being sent or retrying; "dead_lettered"), oldest first, `limit` at a time after
        the (received_at, id) cursor `after`; the cursor of the next page, or None."""
        wanted = LISTED_STATES[state]
        marks = ", ".join("?" for _ in wanted)
        cursor = after or (since, "")
        with self._outbox.read() as conn:
            rows = conn.execute(
                "SELECT unique_receipt_id, received_at FROM receipts r WHERE received_at >= ? "
                "AND (received_at, unique_receipt_id) > (?, ?) AND EXISTS (SELECT 1 FROM "
                f"deliveries d WHERE d.record_key = r.unique_receipt_id AND d.state IN ({marks})) "
                "ORDER BY received_at, unique_receipt_id LIMIT ?",
                (since, cursor[0], cursor[1], *wanted, limit + 1),
            ).fetchall()
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
        with self._outbox.read() as conn:
            rows = conn.execute(
                "SELECT o.local_id, o.cloud_contact_id FROM subjects s "
                "JOIN outbound_contacts o ON o.local_id = s.record_key "
                "WHERE s.kind = 'contact' AND s.subject = ? ORDER BY o.received_at",
                (self._keyring.keyed_hash(keys[0].encode()),),
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def counters(self) -> dict[str, int]:
        with self._outbox.read() as conn:
            rows = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        return {name: int(rows.get(name, 0)) for name in COUNTERS}


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


def _known_revision(conn: sqlite3.Connection, key: str, content_hash: str) -> int | None:
    row = conn.execute(
        "SELECT revision FROM receipt_revisions WHERE unique_receipt_id = ? AND content_hash = ?",
        (key, content_hash),
    ).fetchone()
    return None if row is None else int(row[0])


def _record_revision(
    conn: sqlite3.Connection, key: str, revision: int, content_hash: str, now: float
) -> None:
    conn.execute(
        "INSERT INTO receipt_revisions VALUES (?, ?, ?, ?)", (key, revision, content_hash, now)
    )


def _insert_subjects(conn: sqlite3.Connection, kind: str, key: str, subjects: list[str]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO subjects VALUES (?, ?, ?)", [(s, kind, key) for s in subjects]
    )


def _insert_delivery(
    conn: sqlite3.Connection,
    key: str,
    destination: str,
    revision: int,
    queue_id: int,
    now: float,
    queue: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO deliveries "
        "(record_key, destination, revision, queue_id, state, updated_at, queue) "
        "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
        (key, destination, revision, queue_id, now, queue or destination),
    )


QUARANTINE_MAX_ROWS = 100_000


def _evict_quarantine(conn: sqlite3.Connection, max_bytes: int, keep: str) -> None:
    """The oldest quarantined bodies go while the kept ones are over their cap (in bytes, or
    in rows: a flood of tiny bodies); `keep`, the one just written, stays."""
    while True:
        size = conn.execute("SELECT value FROM counters WHERE name = 'quarantine_bytes'")
        (used,) = size.fetchone() or (0,)
        low, high = conn.execute("SELECT MIN(rowid), MAX(rowid) FROM quarantine").fetchone()
        if used <= max_bytes and (high or 0) - (low or 0) < QUARANTINE_MAX_ROWS:
            return
        oldest = [
            row[0]
            for row in conn.execute(
                "SELECT error_id FROM quarantine WHERE error_id != ? ORDER BY rowid LIMIT 100",
                (keep,),
            )
        ]
        if not oldest:
            return
        marks = ",".join("?" * len(oldest))
        conn.execute(f"DELETE FROM quarantine WHERE error_id IN ({marks})", oldest)
        conn.execute(
            f"DELETE FROM subjects WHERE kind = 'quarantine' AND record_key IN ({marks})", oldest
        )
        _bump(conn, "quarantine_evicted", len(oldest))


def _counter_for(status: str) -> str:
    return {"queued": "accepted", "duplicate": "duplicates", "amended": "amended"}[status]


def _bump(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    conn.execute(
        "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
        (name, by, by),
    )
