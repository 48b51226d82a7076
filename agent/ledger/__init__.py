"""The ledger: what the agent keeps in outbox.db, beside and inside the queues.

This package holds the queues (outbox.py, over persist-queue), the tables beside them and their
migrations (schema.py), the takings (takings.py) and, in this module, the delivery ledger: what
became of each queued item — delivered, retrying, dead-lettered. outbox.py opens the file and
holds its writer; only this package and the composition root (agent.app) import it (an
import-linter contract): the rest of the agent takes its names from here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from agent.core import crypto, models
from agent.core.crypto import Keyring
from agent.core.errors import KeyStoreError, NotFoundError
from agent.core.figures import Amounts
from agent.ledger import takings
from agent.ledger.outbox import (
    CLAIMED_STATUS,
    LOW_PRIORITY,
    UNDECODABLE,
    Claimed,
    Outbox,
    Transaction,
    encode,
)

__all__ = [  # the queues' names the rest of the agent uses (agent.ledger.outbox is ours)
    "CLAIMED_STATUS",
    "LOW_PRIORITY",
    "UNDECODABLE",
    "Claimed",
    "Outbox",
    "Transaction",
    "encode",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, in words and ids only (never a body with personal data)."""

    reason: str
    error_id: str
    status: int | None = None
    cloud_error_id: str | None = None
    body_excerpt: str = ""
    next_attempt_at: float | None = None


class Ledger:
    """Delivery's view of the ledger tables (their schema: agent/ledger/schema.py)."""

    def __init__(self, outbox: Outbox, keyring: Keyring) -> None:
        self._outbox = outbox
        self._keyring = keyring

    def _write(self, work: Callable[[Transaction], T]) -> T:
        return self._outbox.run(work)

    def message_for(self, item: dict[str, Any]) -> models.OutboundMessage:
        """A queue item opened again: business fields and personal fields, decoded and checked."""
        body = dict(item["body"])
        if item.get("personal"):
            aad = crypto.record_aad(item["kind"], item["key"])
            body.update(json.loads(self._keyring.open(item["personal"], aad)))
        if item["kind"] == "receipt":
            receipt = msgspec.convert(body, models.Receipt, strict=False)
            return models.OutboundMessage(
                kind="receipt",
                idempotency_key=item["key"],
                revision=item["revision"],
                receipt=receipt,
            )
        contact = msgspec.convert(body, models.Contact, strict=False)
        return models.OutboundMessage(
            kind="contact",
            idempotency_key=item["key"],
            revision=item["revision"],
            contact=contact,
            local_id=item["key"],
        )

    def record_delivery(
        self,
        destination: str,
        key: str,
        revision: int,
        state: str,
        body: dict[str, Any] | None = None,
        journal: dict[str, Any] | None = None,
        sent: tuple[str, Amounts] | None = None,
        append_only: bool = False,
    ) -> None:
        """Record what became of one revision at one destination (delivery calls this).

        body: the business fields as delivered (never the personal ones), kept so a later
        amendment can be sent to an append-only cloud as a difference. journal: the delivered
        queue item (personal part still sealed), kept for `till-agent replay`. sent: the key a
        receipt went out under and the figures of what went (the whole receipt, or its
        difference to an append-only cloud), for reconciliation.
        """

        def work(batch: Transaction) -> None:
            if journal is not None and journal.get("kind") == "receipt":
                _journal(batch, destination, journal)
            if sent is not None:
                takings.record_sent(
                    batch.conn, key, destination, revision, sent, append_only=append_only
                )
            batch.conn.execute(
                "UPDATE deliveries SET state = ?, updated_at = ?, attempts = attempts + 1, "
                "delivered_body = ? WHERE record_key = ? AND destination = ? AND revision = ?",
                (
                    state,
                    time.time(),
                    None if body is None else json.dumps(body),
                    key,
                    destination,
                    revision,
                ),
            )

        self._write(work)

    def record_cloud_contact(self, local_id: str, cloud_id: str) -> None:
        """The cloud's id of a member registered at this till (persisted: receipts wait for it)."""

        def work(batch: Transaction) -> None:
            batch.conn.execute(
                "UPDATE outbound_contacts SET cloud_contact_id = ? WHERE local_id = ?",
                (cloud_id, local_id),
            )

        self._write(work)

    def cloud_contact_id(self, local_id: str) -> str | None:
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT cloud_contact_id FROM outbound_contacts WHERE local_id = ?", (local_id,)
            ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def delivered_before(self, destination: str, key: str, revision: int) -> dict[str, Any] | None:
        """The business fields of the latest earlier revision this destination received."""
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT delivered_body FROM deliveries WHERE record_key = ? AND destination = ? "
                "AND revision < ? AND state = 'delivered' AND delivered_body IS NOT NULL "
                "ORDER BY revision DESC LIMIT 1",
                (key, destination, revision),
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def record_failure(
        self, destination: str, item: dict[str, Any], failure: Failure, *, charge: bool = True
    ) -> None:
        """A failed attempt of an item: why, when next; charged to it unless an outage's."""

        def work(batch: Transaction) -> None:
            now = time.time()
            batch.conn.execute(
                "UPDATE deliveries SET state = 'retrying', updated_at = ?, "
                "attempts = attempts + ?, next_attempt_at = ?, last_error_id = ?, "
                "cloud_error_id = ?, last_error = ?, "
                "first_failed_at = CASE WHEN ? THEN COALESCE(first_failed_at, ?) "
                "ELSE first_failed_at END "
                "WHERE record_key = ? AND destination = ? AND revision = ?",
                (
                    now,
                    int(charge),
                    failure.next_attempt_at,
                    failure.error_id,
                    failure.cloud_error_id,
                    failure.reason[:300],
                    int(charge),
                    now,
                    item.get("key"),
                    destination,
                    item.get("revision"),
                ),
            )

        self._write(work)

    def failing(self, destination: str, item: dict[str, Any]) -> dict[str, Any]:
        """What the ledger knows of an item's failures at a destination: attempts, the last
        reason in words, its error ids and when it is tried next (epoch seconds)."""
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT attempts, last_error, last_error_id, cloud_error_id, next_attempt_at "
                "FROM deliveries WHERE record_key = ? AND destination = ? AND revision = ?",
                (item.get("key"), destination, item.get("revision")),
            ).fetchone()
        names = ("attempts", "reason", "error_id", "cloud_error_id", "next_attempt_at")
        return dict(zip(names, row or (0, None, None, None, None), strict=True))

    def attempts(self, destination: str, item: dict[str, Any]) -> int:
        """The failed attempts charged to an item at a destination so far."""
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT attempts FROM deliveries WHERE record_key = ? AND destination = ? "
                "AND revision = ? AND state = 'retrying'",
                (item.get("key"), destination, item.get("revision")),
            ).fetchone()
        return 0 if row is None else int(row[0])

    def record_at(self, queue: str, queue_id: int) -> dict[str, Any] | None:
        """{"key", "revision"} of the record waiting at that place of a queue, if the ledger has
        one (an item whose stored bytes cannot be read back is still named by it)."""
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT record_key, revision FROM deliveries WHERE queue = ? AND queue_id = ? "
                "AND state IN ('queued', 'retrying') ORDER BY revision DESC LIMIT 1",
                (queue, queue_id),
            ).fetchone()
        return None if row is None else {"key": row[0], "revision": int(row[1])}

    def first_failed_at(self, destination: str, item: dict[str, Any]) -> float | None:
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT first_failed_at FROM deliveries WHERE record_key = ? AND destination = ? "
                "AND revision = ?",
                (item["key"], destination, item["revision"]),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def dead_letter(self, claimed: Claimed, failure: Failure) -> int:
        """Move a claimed item to the dead letters, with why; returns the dead letter's id."""
        item = claimed.item

        def work(batch: Transaction) -> int:
            now = time.time()
            cursor = batch.conn.execute(
                "INSERT INTO dead_letters (destination, kind, record_key, revision, item, status, "
                "reason, error_id, cloud_error_id, body_excerpt, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    claimed.destination,
                    item["kind"],
                    item["key"],
                    item["revision"],
                    json.dumps(item),
                    failure.status,
                    failure.reason[:300],
                    failure.error_id,
                    failure.cloud_error_id,
                    self._sealed_excerpt(claimed.destination, item, failure.body_excerpt),
                    now,
                ),
            )
            batch.conn.execute(
                "UPDATE deliveries SET state = 'dead_lettered', updated_at = ?, last_error_id = ?, "
                "cloud_error_id = ?, last_error = ? "
                "WHERE record_key = ? AND destination = ? AND revision = ?",
                (
                    now,
                    failure.error_id,
                    failure.cloud_error_id,
                    failure.reason[:300],
                    item["key"],
                    claimed.destination,
                    item["revision"],
                ),
            )
            _bump(batch.conn, "dead_letters")
            return int(cursor.lastrowid or 0)

        return self._outbox.settle(claimed, work)

    def _sealed_excerpt(self, destination: str, item: dict[str, Any], excerpt: str) -> str:
        """The cloud's excerpt sealed like the personal data ("" stays ""): it holds only field
        names and codes, but it is a cloud's answer about a person's record all the same."""
        if not excerpt:
            return ""
        aad = crypto.excerpt_aad(destination, item["key"], item["revision"])
        return self._keyring.seal(excerpt[:500].encode(), aad)


def _bump(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(
        "INSERT INTO counters VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value = value + 1",
        (name,),
    )


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as shown to a technician: ids, reasons, never the personal fields."""

    id: int
    destination: str
    kind: str
    record_key: str
    revision: int
    status: int | None
    reason: str
    error_id: str
    cloud_error_id: str | None
    body_excerpt: str
    created_at: float
    redacted: bool


DEAD_LETTER_COLUMNS = (
    "id, destination, kind, record_key, revision, status, reason, error_id, cloud_error_id, "
    "body_excerpt, created_at, redacted_at IS NOT NULL"
)


def _check_id(dead_letter_id: int) -> None:
    """An id SQLite cannot even hold names no dead letter."""
    if not 0 < dead_letter_id < 2**63:
        raise NotFoundError(f"no dead letter {dead_letter_id}")


SEALED_EXCERPT = "(sealed: open it on the running agent)"


def _dead_letter(row: tuple[Any, ...], keyring: Keyring | None) -> DeadLetter:
    values = list(row)
    values[-1] = bool(values[-1])
    letter = DeadLetter(*values)
    if not crypto.is_sealed(letter.body_excerpt):
        return letter  # empty, or kept in clear before excerpts were sealed
    return dataclasses.replace(letter, body_excerpt=_opened(letter, keyring))


def _opened(letter: DeadLetter, keyring: Keyring | None) -> str:
    if keyring is None:
        return SEALED_EXCERPT
    aad = crypto.excerpt_aad(letter.destination, letter.record_key, letter.revision)
    try:
        return keyring.open(letter.body_excerpt, aad).decode("utf-8", "replace")
    except KeyStoreError:
        return "(sealed with a key destroyed since)"


def _journal(batch: Transaction, destination: str, item: dict[str, Any]) -> None:
    created = str(item["body"].get("createdDate", ""))
    batch.conn.execute(
        "INSERT INTO journal (destination, record_key, revision, business_date, item, "
        "delivered_at) VALUES (?, ?, ?, ?, ?, ?)",
        (destination, item["key"], item["revision"], created[:10], json.dumps(item), time.time()),
    )


@dataclass(frozen=True)
class ReplayStep:
    """One item a replay would queue again, and what the cloud will make of it."""

    destination: str
    key: str
    revision: int
    sends_as: str  # the id it went out under when it was delivered
    effect: str  # REPLACES or DUPLICATE


WAITING_STATES = ("queued", "retrying")  # in a queue, being sent or set aside
REPLACES = "replaces"  # the cloud replaces its copy by id
DUPLICATE = "duplicate"  # the cloud has this id and ignores it; it keeps only what it lacks


class Journal:
    """Delivered receipts kept (sealed, retention-limited) so a date range can be sent again."""

    def __init__(self, outbox: Outbox, amends: Mapping[str, str]) -> None:
        self._outbox = outbox
        self._amends = amends  # destination -> "replace" | "difference" (its config.CloudKind)

    def replay(self, first_day: str, last_day: str, destination: str | None = None) -> int:
        """Queue again, in each destination's low-priority lane, what was delivered for those days.

        The same items with the same idempotency keys: a cloud that replaces by id replaces, an
        append-only one ignores what it has and takes only what it lacks.
        """

        def work(batch: Transaction) -> int:
            items = _replayed(batch.conn, first_day, last_day, destination)
            for name, item, _ in items:
                queue = name + LOW_PRIORITY
                queue_id = batch.put(queue, item)
                batch.conn.execute(
                    "UPDATE deliveries SET state = 'queued', queue_id = ?, queue = ?, "
                    "updated_at = ? WHERE record_key = ? AND destination = ? AND revision = ?",
                    (queue_id, queue, time.time(), item["key"], name, item["revision"]),
                )
            return len(items)

        return self._outbox.run(work)

    def plan(
        self, first_day: str, last_day: str, destination: str | None = None
    ) -> list[ReplayStep]:
        """What replay would queue, in order, and what each cloud will do with it (a dry run)."""
        with self._outbox.read() as conn:
            items = _replayed(conn, first_day, last_day, destination)
        return [
            ReplayStep(
                name,
                item["key"],
                item["revision"],
                sent_key or item["key"],
                DUPLICATE if self._amends.get(name) == "difference" else REPLACES,
            )
            for name, item, sent_key in items
        ]


def _replayed(
    conn: sqlite3.Connection, first_day: str, last_day: str, destination: str | None
) -> list[tuple[str, dict[str, Any], str | None]]:
    """(destination, item, the id it went out under) of every revision delivered on those days.

    What is queued already (an earlier replay's, not yet delivered again) is left out.
    Receipts in the order first delivered, each one's revisions in order: an append-only cloud
    gets the original and each difference again and keeps only those it lacks; a cloud that
    replaces by id ends with the latest revision, whatever order they first went in.
    """
    where = "j.business_date BETWEEN ? AND ?" + (" AND j.destination = ?" if destination else "")
    args = (first_day, last_day, destination) if destination else (first_day, last_day)
    rows = conn.execute(
        "SELECT j.destination, j.item, d.sent_key, d.state FROM journal j LEFT JOIN deliveries d "
        "ON d.record_key = j.record_key AND d.destination = j.destination "
        f"AND d.revision = j.revision WHERE {where} ORDER BY j.id",
        args,
    ).fetchall()
    items: dict[tuple[str, str, int], tuple[dict[str, Any], str | None]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for name, text, sent_key, state in rows:
        if state in WAITING_STATES:
            continue  # queued already (by an earlier replay): a replay adds it once, not again
        item = json.loads(text)
        first_seen.setdefault((name, item["key"]), len(first_seen))
        items[name, item["key"], item["revision"]] = (item, sent_key)
    ordered = sorted(items, key=lambda k: (first_seen[k[0], k[1]], k[2]))
    return [(k[0], *items[k]) for k in ordered]


class DeadLetters:
    """List, inspect, re-queue and purge dead letters (the CLI and the API call these)."""

    def __init__(self, outbox: Outbox, keyring: Keyring | None = None) -> None:
        self._outbox = outbox
        self._keyring = keyring  # opens the sealed excerpts; without it they show as sealed

    def count(self) -> int:
        """How many dead letters are kept: a counter kept by the table's triggers, O(1)."""
        with self._outbox.read() as conn:
            row = conn.execute(
                "SELECT value FROM counters WHERE name = 'dead_letters_kept'"
            ).fetchone()
        return 0 if row is None else int(row[0])

    def all(self, destination: str | None = None) -> list[DeadLetter]:
        where, args = ("WHERE destination = ?", (destination,)) if destination else ("", ())
        with self._outbox.read() as conn:
            rows = conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {where} ORDER BY id", args
            ).fetchall()
        return [_dead_letter(row, self._keyring) for row in rows]

    def get(self, dead_letter_id: int) -> DeadLetter:
        _check_id(dead_letter_id)
        with self._outbox.read() as conn:
            row = conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?", (dead_letter_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no dead letter {dead_letter_id}")
        return _dead_letter(row, self._keyring)

    def retry(self, dead_letter_id: int) -> None:
        """Back into its destination's queue (written before the dead letter is deleted)."""
        _check_id(dead_letter_id)

        def work(batch: Transaction) -> None:
            row = batch.conn.execute(
                "SELECT destination, item FROM dead_letters WHERE id = ?",
                (dead_letter_id,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no dead letter {dead_letter_id}")
            destination, text = row
            item = json.loads(text)
            queue_id = batch.put(destination, item)
            batch.conn.execute(
                "UPDATE deliveries SET state = 'queued', attempts = 0, first_failed_at = NULL, "
                "queue_id = ?, updated_at = ? "
                "WHERE record_key = ? AND destination = ? AND revision = ?",
                (queue_id, time.time(), item["key"], destination, item["revision"]),
            )
            batch.conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,))

        self._outbox.run(work)

    def unnotified(self) -> list[DeadLetter]:
        """Dead letters no digest has reported yet."""
        with self._outbox.read() as conn:
            rows = conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE notified_at IS NULL "
                "ORDER BY id"
            ).fetchall()
        return [_dead_letter(row, self._keyring) for row in rows]

    def mark_notified(self, ids: list[int], at: float) -> None:
        def work(batch: Transaction) -> None:
            batch.conn.executemany(
                "UPDATE dead_letters SET notified_at = ? WHERE id = ?", [(at, i) for i in ids]
            )

        self._outbox.run(work)

    def purge(self, dead_letter_id: int) -> None:
        """Delete a dead letter for good (its delivery state stays dead_lettered)."""
        _check_id(dead_letter_id)

        def work(batch: Transaction) -> int:
            return batch.conn.execute(
                "DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,)
            ).rowcount

        if self._outbox.run(work) == 0:
            raise NotFoundError(f"no dead letter {dead_letter_id}")
