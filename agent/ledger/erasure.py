"""Retention and erasure of the ledger's rows: what privacy decides, done on outbox.db's tables.

agent/privacy keeps the policy (what is due, when, which person) and the orchestration across
stores; every statement that redacts, deletes or re-seals a row of outbox.db is here, beside the
schema, so a new column holding personal data is found in one folder. Each function runs inside
the caller's Transaction.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence

from agent.core import crypto
from agent.ledger import takings
from agent.ledger.item import as_text, decode
from agent.ledger.outbox import Transaction

FINAL_STATES = ("delivered", "superseded", "dead_lettered", "forgotten")

# -- the timed purge -------------------------------------------------------------------------


def redact_quarantine(tx: Transaction, cutoff: float, now: float) -> int:
    """Refused bodies past retention lose their content; the record of the refusal stays."""
    tx.conn.execute(
        "DELETE FROM subjects WHERE kind = 'quarantine' AND record_key IN "
        "(SELECT error_id FROM quarantine WHERE received_at < ? AND sealed_body IS NOT NULL)",
        (cutoff,),
    )
    cursor = tx.conn.execute(
        "UPDATE quarantine SET sealed_body = NULL, redacted_at = ? "
        "WHERE received_at < ? AND sealed_body IS NOT NULL",
        (now, cutoff),
    )
    return cursor.rowcount


def redact_dead_letters(tx: Transaction, cutoff: float, now: float) -> int:
    """Dead letters past retention lose their personal fields; what happened stays."""
    return _strip_dead_letters(tx.conn, "created_at < ?", (cutoff,), now)


def delete_journal(tx: Transaction, cutoff: float) -> int:
    """The replay journal's entries delivered before the cutoff."""
    cursor = tx.conn.execute("DELETE FROM journal WHERE delivered_at < ?", (cutoff,))
    return cursor.rowcount


def purge_records(tx: Transaction, cutoff: float) -> int:
    """Forget receipts and contacts older than the ledger retention once every delivery is
    final, and the takings' days before it; how many records went."""
    conn = tx.conn
    finals = ",".join("?" * len(FINAL_STATES))
    open_records = f"SELECT record_key FROM deliveries WHERE state NOT IN ({finals})"
    receipts = [
        row[0]
        for row in conn.execute(
            f"SELECT unique_receipt_id FROM receipts WHERE updated_at < ? "
            f"AND unique_receipt_id NOT IN ({open_records})",
            (cutoff, *FINAL_STATES),
        ).fetchall()
    ]
    contacts = [
        row[0]
        for row in conn.execute(
            f"SELECT local_id FROM outbound_contacts WHERE received_at < ? "
            f"AND local_id NOT IN ({open_records})",
            (cutoff, *FINAL_STATES),
        ).fetchall()
    ]
    for key in receipts:
        _delete_record(conn, "receipt", key)
    for key in contacts:
        _delete_record(conn, "contact", key)
    cutoff_day = dt.datetime.fromtimestamp(cutoff, dt.UTC).date().isoformat()
    takings.purge_days(conn, cutoff_day)
    return len(receipts) + len(contacts)


def _delete_record(conn: sqlite3.Connection, kind: str, key: str) -> None:
    if kind == "receipt":
        conn.execute("DELETE FROM receipts WHERE unique_receipt_id = ?", (key,))
        conn.execute("DELETE FROM receipt_revisions WHERE unique_receipt_id = ?", (key,))
        takings.forget_figures(conn, key)
    else:
        conn.execute("DELETE FROM outbound_contacts WHERE local_id = ?", (key,))
    conn.execute("DELETE FROM deliveries WHERE record_key = ?", (key,))
    conn.execute("DELETE FROM subjects WHERE kind = ? AND record_key = ?", (kind, key))


# -- erasure of one person -------------------------------------------------------------------


def records_of(tx: Transaction, subjects: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, record key) of every record holding one of these subject hashes."""
    marks = ",".join("?" * len(subjects))
    rows = tx.conn.execute(
        f"SELECT DISTINCT kind, record_key FROM subjects WHERE subject IN ({marks})",
        tuple(subjects),
    ).fetchall()
    return [(str(kind), str(key)) for kind, key in rows]


def delete_quarantined(tx: Transaction, error_id: str) -> int:
    """A quarantined body deleted outright; 1 if it was there."""
    return tx.conn.execute("DELETE FROM quarantine WHERE error_id = ?", (error_id,)).rowcount


def strip_dead_letters(tx: Transaction, key: str, now: float) -> int:
    """A record's dead letters lose their personal fields; how many."""
    return _strip_dead_letters(tx.conn, "record_key = ?", (key,), now)


def _strip_dead_letters(
    conn: sqlite3.Connection, where: str, args: tuple[object, ...], now: float
) -> int:
    rows = conn.execute(
        f"SELECT id, item FROM dead_letters WHERE redacted_at IS NULL AND {where}", args
    ).fetchall()
    for dead_letter_id, text in rows:
        conn.execute(  # the cloud's excerpt about that record goes too
            "UPDATE dead_letters SET item = ?, body_excerpt = '', redacted_at = ? WHERE id = ?",
            (_stripped(text), now, dead_letter_id),
        )
    return len(rows)


def strip_journal(tx: Transaction, key: str) -> None:
    """A forgotten buyer leaves the replay journal too; the sale stays replayable."""
    rows = tx.conn.execute("SELECT id, item FROM journal WHERE record_key = ?", (key,)).fetchall()
    for row_id, text in rows:
        tx.conn.execute("UPDATE journal SET item = ? WHERE id = ?", (_stripped(text), row_id))


def _stripped(text: str) -> str:
    """A kept item without its personal fields, for good."""
    item = decode(text)
    item.personal, item.forgotten = None, True
    return as_text(item)


def forget_subjects(tx: Transaction, kind: str, key: str) -> None:
    """A record no longer findable by any person's hash."""
    tx.conn.execute("DELETE FROM subjects WHERE kind = ? AND record_key = ?", (kind, key))


def mark_forgotten(tx: Transaction, key: str, destination: str, now: float) -> None:
    """A record's waiting delivery to a destination ends as erased on request."""
    tx.conn.execute(
        "UPDATE deliveries SET state = 'forgotten', updated_at = ? "
        "WHERE record_key = ? AND destination = ? AND state IN ('queued', 'retrying')",
        (now, key, destination),
    )


# -- keys ------------------------------------------------------------------------------------


def reseal_rows(tx: Transaction, keyring: crypto.Keyring, key_id: str) -> int:
    """Re-seal, under the active key, every value in the ledger's rows still sealed with
    key_id (quarantined bodies, dead letters and their excerpts, the journal); how many."""
    count = _reseal_items(tx.conn, keyring, key_id)
    count += _reseal_excerpts(tx.conn, keyring, key_id)
    rows = tx.conn.execute(
        "SELECT error_id, sealed_body FROM quarantine WHERE sealed_body LIKE ?",
        (f"{crypto.SEAL_PREFIX}.{key_id}.%",),
    ).fetchall()
    for error_id, token in rows:
        aad = crypto.record_aad("quarantine", error_id)
        fresh = keyring.seal(keyring.open(token, aad), aad)
        tx.conn.execute(
            "UPDATE quarantine SET sealed_body = ? WHERE error_id = ?", (fresh, error_id)
        )
    return count + len(rows)


def _reseal_items(conn: sqlite3.Connection, keyring: crypto.Keyring, key_id: str) -> int:
    """Dead letters and the replay journal keep whole items: re-seal their personal part."""
    count = 0
    for table in ("dead_letters", "journal"):
        rows = conn.execute(
            f"SELECT id, item FROM {table} WHERE item LIKE ?",
            (f"%{crypto.SEAL_PREFIX}.{key_id}.%",),
        ).fetchall()
        for row_id, text in rows:
            item = decode(text)
            aad = crypto.record_aad(item.kind, item.key)
            item.personal = keyring.seal(keyring.open(item.personal or "", aad), aad)
            conn.execute(f"UPDATE {table} SET item = ? WHERE id = ?", (as_text(item), row_id))
        count += len(rows)
    return count


def _reseal_excerpts(conn: sqlite3.Connection, keyring: crypto.Keyring, key_id: str) -> int:
    rows = conn.execute(
        "SELECT id, destination, record_key, revision, body_excerpt FROM dead_letters "
        "WHERE body_excerpt LIKE ?",
        (f"{crypto.SEAL_PREFIX}.{key_id}.%",),
    ).fetchall()
    for row_id, destination, key, revision, token in rows:
        aad = crypto.excerpt_aad(destination, key, revision)
        fresh = keyring.seal(keyring.open(token, aad), aad)
        conn.execute("UPDATE dead_letters SET body_excerpt = ? WHERE id = ?", (fresh, row_id))
    return len(rows)


def sealed_count(tx: Transaction, key_id: str) -> int:
    """How many stored values (queue items, quarantine, dead letters, journal) are still
    sealed with key_id."""
    pattern = f"%{crypto.SEAL_PREFIX}.{key_id}.%"
    count = 0
    for table, column in (
        ("quarantine", "sealed_body"),
        ("dead_letters", "item"),
        ("dead_letters", "body_excerpt"),
        ("journal", "item"),
    ):
        count += int(
            tx.conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {column} LIKE ?", (pattern,)
            ).fetchone()[0]
        )
    return count + tx.count_matching(pattern)
