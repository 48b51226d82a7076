"""The records intake writes and reads back: receipts, revisions, deliveries, members, subjects,
quarantine and counters — the only SQL on those rows outside the ledger's own modules.

Writes take the open Transaction (intake's rows and queue items commit together); reads take the
Outbox and open a reader of their own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from agent.core import figures
from agent.ledger import takings
from agent.ledger.outbox import Outbox, Transaction

QUARANTINE_MAX_ROWS = 100_000

# -- counters -------------------------------------------------------------------------------


def bump(tx: Transaction, name: str, by: int = 1) -> None:
    """Add to one of the outbox's counters (created at zero)."""
    _bump(tx.conn, name, by)


def _bump(conn: sqlite3.Connection, name: str, by: int) -> None:
    conn.execute(
        "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
        (name, by, by),
    )


def counters(outbox: Outbox) -> dict[str, int]:
    """Every counter by name."""
    with outbox.read() as conn:
        rows = conn.execute("SELECT name, value FROM counters").fetchall()
    return {str(name): int(value) for name, value in rows}


# -- receipts -------------------------------------------------------------------------------


def receipt_revision(tx: Transaction, key: str) -> int | None:
    """The latest revision of a receipt, None if it was never handed over."""
    row = tx.conn.execute(
        "SELECT revision FROM receipts WHERE unique_receipt_id = ?", (key,)
    ).fetchone()
    return None if row is None else int(row[0])


def known_revision(tx: Transaction, key: str, content_hash: str) -> int | None:
    """The revision of a receipt with exactly this content, None if there is none."""
    row = tx.conn.execute(
        "SELECT revision FROM receipt_revisions WHERE unique_receipt_id = ? AND content_hash = ?",
        (key, content_hash),
    ).fetchone()
    return None if row is None else int(row[0])


def insert_receipt(tx: Transaction, key: str, now: float, warnings: Sequence[str]) -> None:
    """A receipt's first revision."""
    tx.conn.execute(
        "INSERT INTO receipts VALUES (?, 1, ?, ?, ?)", (key, now, now, json.dumps(list(warnings)))
    )


def amend_receipt(
    tx: Transaction, key: str, revision: int, now: float, warnings: Sequence[str]
) -> None:
    """A receipt moved to a new revision."""
    tx.conn.execute(
        "UPDATE receipts SET revision = ?, updated_at = ?, warnings = ? "
        "WHERE unique_receipt_id = ?",
        (revision, now, json.dumps(list(warnings)), key),
    )


def record_revision(
    tx: Transaction, key: str, revision: int, content_hash: str, now: float
) -> None:
    """The content hash of one revision of a receipt, so the same body again is a duplicate."""
    tx.conn.execute(
        "INSERT INTO receipt_revisions VALUES (?, ?, ?, ?)", (key, revision, content_hash, now)
    )


def record_taken(
    tx: Transaction,
    key: str,
    revision: int,
    facts: figures.Facts,
    targets: tuple[str, ...],
    *,
    earlier: tuple[str, ...],
    append_only: frozenset[str],
) -> None:
    """A receipt revision's figures in the takings (see takings.record_taken)."""
    takings.record_taken(
        tx.conn, key, revision, facts, targets, earlier=earlier, append_only=append_only
    )


ReceiptRow = tuple[int, float, tuple[str, ...]]  # revision, received_at, warnings
DeliveryRow = tuple[Any, ...]  # see receipt_deliveries


def receipt(outbox: Outbox, key: str) -> tuple[ReceiptRow, list[DeliveryRow]] | None:
    """A receipt's (revision, received_at, warnings) and its deliveries but the superseded, by
    destination and revision: (destination, revision, state, attempts, next_attempt_at,
    last_error_id, cloud_error_id, updated_at, queue_id, queue). None if there is none."""
    with outbox.read() as conn:
        row = conn.execute(
            "SELECT revision, received_at, warnings FROM receipts WHERE unique_receipt_id = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        rows = conn.execute(
            "SELECT destination, revision, state, attempts, next_attempt_at, last_error_id, "
            "cloud_error_id, updated_at, queue_id, COALESCE(queue, destination) "
            "FROM deliveries WHERE record_key = ? "
            "AND state != 'superseded' ORDER BY destination, revision",
            (key,),
        ).fetchall()
    return (int(row[0]), float(row[1]), tuple(json.loads(row[2]))), [tuple(r) for r in rows]


def receipts_in_states(
    outbox: Outbox, states: Sequence[str], since: float, after: tuple[float, str], limit: int
) -> list[tuple[str, float]]:
    """(id, received_at) of up to `limit` receipts received at or after `since` with a delivery
    in one of `states`, oldest first, after the (received_at, id) cursor `after`."""
    marks = ", ".join("?" for _ in states)
    with outbox.read() as conn:
        rows = conn.execute(
            "SELECT unique_receipt_id, received_at FROM receipts r WHERE received_at >= ? "
            "AND (received_at, unique_receipt_id) > (?, ?) AND EXISTS (SELECT 1 FROM "
            f"deliveries d WHERE d.record_key = r.unique_receipt_id AND d.state IN ({marks})) "
            "ORDER BY received_at, unique_receipt_id LIMIT ?",
            (since, after[0], after[1], *states, limit),
        ).fetchall()
    return [(str(row[0]), float(row[1])) for row in rows]


# -- deliveries -----------------------------------------------------------------------------


def delivered_to(tx: Transaction, key: str) -> tuple[str, ...]:
    """Every destination a record has a delivery row for, by name."""
    rows = tx.conn.execute(
        "SELECT DISTINCT destination FROM deliveries WHERE record_key = ? ORDER BY destination",
        (key,),
    ).fetchall()
    return tuple(r[0] for r in rows)


def insert_delivery(
    tx: Transaction,
    key: str,
    destination: str,
    revision: int,
    queue_id: int,
    now: float,
    queue: str | None = None,
) -> None:
    """A queued delivery of one revision of a record to one destination (through `queue`, the
    destination's own or its low-priority lane)."""
    tx.conn.execute(
        "INSERT INTO deliveries "
        "(record_key, destination, revision, queue_id, state, updated_at, queue) "
        "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
        (key, destination, revision, queue_id, now, queue or destination),
    )


def waiting_delivery(tx: Transaction, key: str, destination: str) -> tuple[int, int, str] | None:
    """(revision, queue id, queue) of the latest revision of a record still waiting to go to a
    destination (queued or retrying), None if none waits."""
    row = tx.conn.execute(
        "SELECT revision, queue_id, COALESCE(queue, destination) FROM deliveries "
        "WHERE record_key = ? AND destination = ? AND state IN ('queued', 'retrying') "
        "ORDER BY revision DESC LIMIT 1",
        (key, destination),
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]), str(row[2]))


def supersede_delivery(
    tx: Transaction, key: str, destination: str, revision: int, now: float
) -> None:
    """A waiting revision's delivery replaced by a later revision's."""
    tx.conn.execute(
        "UPDATE deliveries SET state = 'superseded', updated_at = ? "
        "WHERE record_key = ? AND destination = ? AND revision = ?",
        (now, key, destination, revision),
    )


# -- members registered at this till, and subjects ------------------------------------------


def insert_subjects(tx: Transaction, kind: str, key: str, subjects: list[str]) -> None:
    """The keyed hashes of the person's email and phone a record holds, so erasure finds it."""
    tx.conn.executemany(
        "INSERT OR IGNORE INTO subjects VALUES (?, ?, ?)", [(s, kind, key) for s in subjects]
    )


def contact_with_content(tx: Transaction, content_hash: str) -> str | None:
    """The local id of a member registered here with exactly this content, if any."""
    row = tx.conn.execute(
        "SELECT local_id FROM outbound_contacts WHERE content_hash = ?", (content_hash,)
    ).fetchone()
    return None if row is None else str(row[0])


def insert_contact(tx: Transaction, local_id: str, content_hash: str, now: float) -> None:
    """A member registered at this till, not yet known to any cloud."""
    tx.conn.execute(
        "INSERT INTO outbound_contacts VALUES (?, ?, ?, NULL)", (local_id, content_hash, now)
    )


def is_issued(outbox: Outbox, local_id: str) -> bool:
    """Whether a member was registered at this till under this local id."""
    with outbox.read() as conn:
        row = conn.execute(
            "SELECT 1 FROM outbound_contacts WHERE local_id = ?", (local_id,)
        ).fetchone()
    return row is not None


def contacts_of_subject(outbox: Outbox, subject: str) -> list[tuple[str, str | None]]:
    """(local id, cloud id or None) of members registered here under this subject hash, oldest
    first."""
    with outbox.read() as conn:
        rows = conn.execute(
            "SELECT o.local_id, o.cloud_contact_id FROM subjects s "
            "JOIN outbound_contacts o ON o.local_id = s.record_key "
            "WHERE s.kind = 'contact' AND s.subject = ? ORDER BY o.received_at",
            (subject,),
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


# -- quarantine -----------------------------------------------------------------------------


def quarantine_again(tx: Transaction, digest: str, now: float) -> str | None:
    """Count a refused body already kept once more; its errorId, None if it is not kept."""
    kept = tx.conn.execute(
        "SELECT error_id FROM quarantine WHERE content_hash = ? AND sealed_body IS NOT NULL",
        (digest,),
    ).fetchone()
    if kept is None:
        return None
    tx.conn.execute(
        "UPDATE quarantine SET times = times + 1, last_at = ? WHERE error_id = ?", (now, kept[0])
    )
    return str(kept[0])


def insert_quarantine(
    tx: Transaction,
    error_id: str,
    now: float,
    refused: tuple[str, str, str],
    sealed: str | None,
    digest: str,
) -> None:
    """A refused body kept (sealed, or None when unreadable); `refused` is (route, code,
    reason), the reason already free of quoted values."""
    route, code, reason = refused
    tx.conn.execute(
        "INSERT INTO quarantine (error_id, received_at, route, code, reason, "
        "sealed_body, content_hash, times, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
        (error_id, now, route, code, reason, sealed, digest, now),
    )


def evict_quarantine(tx: Transaction, max_bytes: int, keep: str) -> None:
    """The oldest quarantined bodies go while the kept ones are over their cap (in bytes, or
    in rows: a flood of tiny bodies); `keep`, the one just written, stays."""
    conn = tx.conn
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
