"""The bulk marks: contact creates that may have gone out in a bulk call, so they are looked up,
never created twice (agent/delivery/bulk.py decides; the rows live here)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from agent.ledger.outbox import Outbox, Transaction

# Created when bulk delivery starts, not by a migration step: a file that never had a bulk
# destination has no such table, as before.
TABLE = """
CREATE TABLE IF NOT EXISTS bulk_sent (
    destination TEXT NOT NULL,
    record_key TEXT NOT NULL,
    revision INTEGER NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (destination, record_key, revision)
)
"""

Mark = tuple[str, int]  # (record key, revision)


def ensure_table(outbox: Outbox) -> None:
    """The marks' table, if the file has none yet."""
    outbox.run(lambda tx: tx.conn.execute(TABLE))


def marked(outbox: Outbox, destination: str) -> set[Mark]:
    """Every (record key, revision) marked as maybe sent to a destination."""
    with outbox.read() as conn:
        rows = conn.execute(
            "SELECT record_key, revision FROM bulk_sent WHERE destination = ?", (destination,)
        ).fetchall()
    return {(str(key), int(revision)) for key, revision in rows}


def mark(outbox: Outbox, destination: str, marks: Sequence[Mark]) -> None:
    """Mark records as maybe sent (before the call that may send them), in one transaction."""

    def work(tx: Transaction) -> None:
        tx.conn.executemany(
            "INSERT OR IGNORE INTO bulk_sent VALUES (?, ?, ?, ?)",
            [(destination, key, revision, time.time()) for key, revision in marks],
        )

    outbox.run(work)


def unmark(outbox: Outbox, destination: str, marks: Sequence[Mark]) -> None:
    """Marks removed once their records' outcomes are known."""
    if not marks:
        return

    def work(tx: Transaction) -> None:
        tx.conn.executemany(
            "DELETE FROM bulk_sent WHERE destination = ? AND record_key = ? AND revision = ?",
            [(destination, key, revision) for key, revision in marks],
        )

    outbox.run(work)
