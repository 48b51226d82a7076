"""The tests' one window onto outbox.db: the ledger's state, read-only, without SQL in a test.

`agent/ledger/` owns every table of outbox.db; a test that wants to see what the ledger holds
(receipts, deliveries, queue items, quarantine, dead letters, the journal, counters) asks this
probe, so a change of the schema is met here once, not in every test. It opens the file
read-only (`mode=ro`): it may look while the agent runs (WAL readers never block the writer)
or after it stopped, and it can never change what it looks at.

Tests that keep raw SQL on purpose, because the point is the file itself and not the ledger:
- tests/test_poison.py: spoils a queue row's bytes in place (`UPDATE ack_queue_… SET data`) and
  plants 20,000 dead letters straight into the table, as a disk or an old store would have
  them, to show the agent copes;
- tests/installer/test_lifecycle.py: drops a queue's table to make an upgrade's migration fail
  and roll back;
- tests/test_storage_faults.py: `PRAGMA quick_check` of a file made read-only, replaced or cut
  short underneath the agent (a read-only open of a WAL file there is itself a fault);
- tests/test_power_loss.py, tests/test_corruption.py, tests/test_migration_crash.py: torn and
  damaged files, made and checked below the ledger (their own files or raw bytes);
- tests/test_forget_everywhere.py: after `forget`, reads every row of every table of every store
  for any trace of the person, on purpose without trusting the ledger's own idea of its tables;
- tests/test_outbox.py, tests/test_outbox_model.py: the outbox's own tests, checking
  persist-queue's tables, its claim statement's plan and the stored bytes against a model;
- tests/perf/: the benchmarks seed stores at scale and weigh the stored bytes;
- tests/test_reconcile.py: counts SQLite's steps of the ledger's own takings queries (no SQL of
  its own: it hands `Outbox.read()`'s connection to agent/ledger/takings.py).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.ledger.item import QueueItem, decode

QUEUE_PREFIX = "ack_queue_"
WAITING_STATUSES = (0, 1, 2, 9)  # persist-queue's ready, claimed and set aside (not acked)


@dataclass(frozen=True)
class Quarantined:
    error_id: str
    code: str
    reason: str
    sealed_body: str | None
    redacted_at: float | None
    times: int


class LedgerProbe:
    """`with LedgerProbe(agent) as ledger:` (or a data directory, or the outbox file's path)."""

    def __init__(self, where: Any) -> None:
        self.path = _outbox_path(where)
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> LedgerProbe:
        self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._conn is not None
        self._conn.close()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._conn is not None, "use the probe as a context manager"
        return [tuple(row) for row in self._conn.execute(sql, args).fetchall()]

    # -- the file ----------------------------------------------------------------------------

    def quick_check(self) -> str:
        return str(self._rows("PRAGMA quick_check")[0][0])

    # -- intake's rows -----------------------------------------------------------------------

    def receipt_ids(self) -> set[str]:
        return {row[0] for row in self._rows("SELECT unique_receipt_id FROM receipts")}

    def counter(self, name: str) -> int | None:
        rows = self._rows("SELECT value FROM counters WHERE name = ?", (name,))
        return None if not rows else int(rows[0][0])

    def quarantine(self) -> list[Quarantined]:
        rows = self._rows(
            "SELECT error_id, code, reason, sealed_body, redacted_at, times FROM quarantine "
            "ORDER BY received_at"
        )
        return [Quarantined(*row) for row in rows]

    # -- deliveries --------------------------------------------------------------------------

    def delivery_states(self, key: str | None = None) -> Counter[str]:
        """How many deliveries are in each state (of one record, or of all)."""
        where, args = ("WHERE record_key = ?", (key,)) if key else ("", ())
        return Counter(row[0] for row in self._rows(f"SELECT state FROM deliveries {where}", args))

    def delivered(self) -> set[tuple[str, str]]:
        """(destination, record key) of every delivered revision."""
        sql = "SELECT destination, record_key FROM deliveries WHERE state = 'delivered'"
        return set(self._rows(sql))

    def unaccounted(self) -> list[tuple[str, str]]:
        """(record key, destination) of deliveries neither delivered nor waiting in their
        destination's queue: what a crash must never leave."""
        found = []
        for destination in {row[0] for row in self._rows("SELECT destination FROM deliveries")}:
            table = f'"{QUEUE_PREFIX}{destination}"'
            marks = ", ".join("?" * len(WAITING_STATUSES))
            found += self._rows(
                "SELECT d.record_key, d.destination FROM deliveries d WHERE d.destination = ? "
                f"AND d.state != 'delivered' AND NOT EXISTS (SELECT 1 FROM {table} q "
                f"WHERE q._id = d.queue_id AND q.status IN ({marks}))",
                (destination, *WAITING_STATUSES),
            )
        return found

    # -- the queues --------------------------------------------------------------------------

    def queues(self) -> list[str]:
        rows = self._rows(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?",
            (f"{QUEUE_PREFIX}%",),
        )
        return sorted(row[0].removeprefix(QUEUE_PREFIX) for row in rows)

    def queue_count(self, queue: str, status: int | None = None) -> int:
        """Rows of one queue (in one persist-queue status, or in any)."""
        where, args = ("WHERE status = ?", (status,)) if status is not None else ("", ())
        return int(self._rows(f'SELECT COUNT(*) FROM "{QUEUE_PREFIX}{queue}" {where}', args)[0][0])

    def queue_items(self, queue: str) -> list[QueueItem]:
        """Every item of a queue, in any status, decoded as the agent decodes it."""
        rows = self._rows(f'SELECT data FROM "{QUEUE_PREFIX}{queue}" ORDER BY _id')
        return [decode(row[0]) for row in rows]

    # -- what delivery keeps -----------------------------------------------------------------

    def dead_letter_items(self) -> list[QueueItem]:
        return [decode(row[0]) for row in self._rows("SELECT item FROM dead_letters ORDER BY id")]

    def dead_letter_excerpts(self) -> list[str]:
        return [row[0] for row in self._rows("SELECT body_excerpt FROM dead_letters ORDER BY id")]

    def journal_items(self) -> list[QueueItem]:
        return [decode(row[0]) for row in self._rows("SELECT item FROM journal ORDER BY id")]


def _outbox_path(where: Any) -> Path:
    """An agent (its outbox), a data directory, or the outbox file itself."""
    outbox = getattr(where, "outbox", None)
    if outbox is not None:
        return Path(outbox.path)
    path = Path(where)
    return path / "outbox.db" if path.is_dir() else path
