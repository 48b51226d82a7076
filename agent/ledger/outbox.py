"""Durable per-destination queues over persist-queue, its only importer."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import persistqueue
import persistqueue.serializers.json as json_serializer
from persistqueue.exceptions import Empty

from agent.core import db
from agent.core.errors import NotFoundError, StorageError
from agent.ledger.item import QueueItem, decode, encode

log = logging.getLogger(__name__)

FILE_NAME = "outbox.db"
# persist-queue's status column: 0 inited, 1 ready, 2 unack (claimed), 5 acked, 9 ack_failed.
PENDING_STATUSES = (0, 1)
CLAIMED_STATUS = 2
ACKED_STATUS = 5
SET_ASIDE_STATUS = 9  # persist-queue's ack_failed: skipped by get(), kept in the table
# Not claimed by a sender: ready, or set aside until its back-off ends. Erasure and key
# rotation rewrite these (a claimed item is the sender's until it settles).
WAITING_STATUSES = (*PENDING_STATUSES, SET_ASIDE_STATUS)
T = TypeVar("T")
# The low-priority lane of a destination (backfill and replay): its queue is the destination's
# name plus this suffix. The on-disk table keeps the old "__bulk" name so existing outbox.db
# files open unchanged; the lane has nothing to do with Engage's bulk endpoint.
LOW_PRIORITY = "__bulk"
PURGE_CHUNK_ROWS = 2000
PURGE_PAUSE_SECONDS = 0.002
SALES_FIRST_SECONDS = 0.02  # how long a write of delivery lets waiting sales go first
SHRINK_PAGES_PER_STEP = 1000


class _Serializer:
    """persist-queue's JSON serializer, but its rows are queue items (agent/ledger/item.py), and
    a row that cannot be read back never raises.

    persist-queue marks a row claimed before it decodes it: a decoding error there would leave
    the row claimed for good (failure matrix 21). Such a row comes out as an item of kind
    "undecodable" instead, with why, and delivery dead-letters it like any item it cannot send.
    """

    dumps = staticmethod(encode)
    loads = staticmethod(decode)
    dump = staticmethod(json_serializer.dump)
    load = staticmethod(json_serializer.load)


class _AckQueue(persistqueue.SQLiteAckQueue):
    """persist-queue's ack queue with our durability pragmas on every connection it opens.

    Its connections carry no size cap: the cap (max_page_count) is on the intake writer only,
    so a full store still lets dispatch claim, ack and purge its way back to room.
    """

    def _new_db_connection(
        self, path: str, multithreading: bool, timeout: float
    ) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._new_db_connection(path, multithreading, timeout)
        db.apply_pragmas(conn)
        return conn


@dataclass(frozen=True)
class Claimed:
    """An item taken from a destination's queue; ack, release or dead-letter it by id."""

    destination: str
    id: int
    item: QueueItem
    enqueued_at: float
    queue: str = ""  # the queue it came from: the destination's, or its low-priority lane

    @property
    def lane_queue(self) -> str:
        return self.queue or self.destination


@dataclass(frozen=True)
class QueueDepth:
    destination: str
    pending: int
    claimed: int
    oldest_enqueued_at: float | None
    low_priority: int = 0  # of pending: how many wait in the low-priority lane


class Transaction:
    """One open write transaction: the caller's own rows and queue items commit together."""

    def __init__(self, conn: sqlite3.Connection, queues: dict[str, _AckQueue]) -> None:
        self.conn = conn
        self._queues = queues
        self.added: Counter[str] = Counter()

    def put(self, destination: str, item: QueueItem) -> int:
        """Insert an item into a destination's queue (persist-queue's own statement)."""
        return self.put_encoded(destination, encode(item))

    def put_encoded(self, destination: str, data: bytes) -> int:
        """put() of an item encode()d before the transaction: less work under the writer."""
        queue = self._queue(destination)
        cursor = self.conn.execute(queue._sql_insert, (data, time.time()))
        self.added[destination] += 1
        return int(cursor.lastrowid or 0)

    def replace(self, destination: str, queue_id: int, item: QueueItem) -> bool:
        """Rewrite a queued item that has not been claimed yet (ready or set aside); False if
        it has already left."""
        queue = self._queue(destination)
        cursor = self.conn.execute(
            f"UPDATE {queue._table_name} SET data = ? WHERE _id = ? AND status IN (?, ?, ?)",
            (encode(item), queue_id, *WAITING_STATUSES),
        )
        return cursor.rowcount == 1

    def pending_items(self, destination: str) -> list[tuple[int, QueueItem]]:
        """Every item of a destination not claimed by a sender (ready or set aside), oldest
        first."""
        queue = self._queue(destination)
        rows = self.conn.execute(
            f"SELECT _id, data FROM {queue._table_name} WHERE status IN (?, ?, ?) ORDER BY _id",
            WAITING_STATUSES,
        ).fetchall()
        return [(int(row[0]), decode(row[1])) for row in rows]

    def remove(self, destination: str, queue_id: int) -> bool:
        """Delete an item not claimed by a sender (ready or set aside); False if it has
        already left."""
        queue = self._queue(destination)
        cursor = self.conn.execute(
            f"DELETE FROM {queue._table_name} WHERE _id = ? AND status IN (?, ?, ?)",
            (queue_id, *WAITING_STATUSES),
        )
        return cursor.rowcount == 1

    def count_matching(self, pattern: str) -> int:
        """Rows of every queue, in any status, whose stored JSON is LIKE the pattern."""
        return sum(
            int(
                self.conn.execute(
                    f"SELECT COUNT(*) FROM {queue._table_name} WHERE CAST(data AS TEXT) LIKE ?",
                    (pattern,),
                ).fetchone()[0]
            )
            for queue in self._queues.values()
        )

    def _queue(self, destination: str) -> _AckQueue:
        try:
            return self._queues[destination]
        except KeyError:
            raise NotFoundError(f"no queue for destination {destination!r}") from None


class _Ticket(Generic[T]):
    """One caller's piece of work in a group commit, and what became of it."""

    def __init__(self, work: Callable[[Transaction], T]) -> None:
        self._work = work
        self._batch: Transaction | None = None
        self._value: T | None = None
        self._error: BaseException | None = None
        self.done = False

    def run_in_savepoint(self, conn: sqlite3.Connection, queues: dict[str, _AckQueue]) -> None:
        conn.execute("SAVEPOINT work")
        batch = Transaction(conn, queues)
        try:
            self._value = self._work(batch)
        except Exception as exc:  # this caller's failure only: undo its writes, keep the rest
            conn.execute("ROLLBACK TO work")
            self._error = exc
        else:
            self._batch = batch
        conn.execute("RELEASE work")

    def committed(self, queues: dict[str, _AckQueue]) -> None:
        """After COMMIT: wake each queue's waiting consumers for the items this work added."""
        if self._batch is not None:
            for destination, count in self._batch.added.items():
                queues[destination].total += count
                queues[destination].put_event.set()
        self.done = True

    def fail(self, error: BaseException) -> None:
        self._error, self._batch, self.done = error, None, True

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return cast(T, self._value)


def queue_names(directory: Path) -> list[str]:
    """Every destination that has a queue in the outbox file, enabled or not."""
    if not (directory / FILE_NAME).exists():
        return []
    conn = db.connect(directory / FILE_NAME)
    try:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'ack_queue_%'"
        ).fetchall()
    finally:
        conn.close()
    return sorted(row[0].removeprefix("ack_queue_") for row in rows)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None if there is none."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _index_ready_items(queue: _AckQueue) -> None:
    """An index of the items still to send, so a claim never walks the delivered ones.

    persist-queue claims with `_id > 0 AND status < 2 ORDER BY _id LIMIT 1` and has no index
    on status: each claim stepped over every delivered (acked) row that waits for the purge,
    25 ms a claim with 100,000 of them, so delivery slowed as it went (P6). A partial index
    holds only the ready rows; its condition is the claim's own, so SQLite uses it.
    """
    table = queue._table_name  # quoted by persist-queue: `ack_queue_<name>`
    index = f'"{table.strip("`")}_ready"'
    putter = cast(sqlite3.Connection, queue._putter)
    try:
        with queue.tran_lock, putter as conn:
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {index} ON {table} (_id) "
                f"WHERE status < {CLAIMED_STATUS}"
            )
    except sqlite3.Error as exc:
        raise StorageError(f"index queue {table}: {exc}") from exc


def _delete_acked(table: str, limit: int, batch: Transaction) -> int:
    cursor = batch.conn.execute(
        f"DELETE FROM {table} WHERE _id IN (SELECT _id FROM {table} WHERE status = ? LIMIT ?)",
        (ACKED_STATUS, limit),
    )
    return cursor.rowcount


class Outbox:
    """One persist-queue SQLiteAckQueue per destination, all in one database file.

    Intake writes through run(): one BEGIN IMMEDIATE ... COMMIT on our own connection that
    holds the intake ledger rows and every destination's queue item, so a receipt is in all of
    its queues or in none (docs/decisions/0002-atomic-fan-out.md). Dispatch reads through
    persist-queue's own get/ack/nack.
    """

    def __init__(
        self,
        directory: Path,
        destinations: Sequence[str],
        *,
        busy_timeout_seconds: float = 5.0,
        max_size_mb: int | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / FILE_NAME
        self._writer = db.connect(
            self.path, busy_timeout_seconds=busy_timeout_seconds, max_size_mb=max_size_mb
        )
        db.savepoints_in_memory(self._writer)
        self._reader = db.connect(self.path, busy_timeout_seconds=busy_timeout_seconds)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self.observe_commit: Callable[[float], object] = lambda seconds: None
        self._pending: list[_Ticket[Any]] = []
        self._pending_lock = threading.Lock()
        self._claimed: set[tuple[str, int]] = set()
        self._claimed_lock = threading.Lock()
        # Every queue in the file is opened, also those of destinations no longer enabled:
        # intake puts only into enabled ones, but purge and erasure must reach all of them.
        lanes = [name + LOW_PRIORITY for name in destinations]
        names = dict.fromkeys([*destinations, *lanes, *queue_names(directory)])
        self._queues = {
            name: self._open_queue(directory, name, busy_timeout_seconds) for name in names
        }
        self._files = {p: _identity(p) for p in (self.path, Path(f"{self.path}-wal"))}

    @staticmethod
    def _open_queue(directory: Path, name: str, busy_timeout_seconds: float) -> _AckQueue:
        try:
            queue = _AckQueue(
                str(directory),
                name=name,
                multithreading=True,
                timeout=busy_timeout_seconds,
                serializer=_Serializer,
                db_file_name=FILE_NAME,
                auto_resume=True,  # items claimed when we crashed go back to ready
            )
        except sqlite3.Error as exc:
            raise StorageError(f"open queue {name}: {exc}") from exc
        _index_ready_items(queue)
        return queue

    @property
    def destinations(self) -> tuple[str, ...]:
        """The destinations with a queue in the file (their low-priority lanes left out)."""
        return tuple(q for q in self._queues if not q.endswith(LOW_PRIORITY))

    def migrate(self, steps: Sequence[str]) -> None:
        """Apply a caller's schema steps to this file (the ledger lives beside the queues)."""
        with self._write_lock:
            db.migrate(self._writer, steps)

    def run(self, work: Callable[[Transaction], T]) -> T:
        """Run work in a durable transaction; return its result only after the COMMIT (fsync).

        Group commit: whoever holds the writer commits every piece of work that arrived while
        the previous commit was being fsync'd, each in its own SAVEPOINT, so one failing piece
        rolls back alone and a failed COMMIT fails them all (no 2xx without a durable write).
        """
        ticket = _Ticket(work)
        with self._pending_lock:
            self._pending.append(ticket)
        with self._write_lock:
            if not ticket.done:
                self._commit_pending()
        return ticket.result()

    def _commit_pending(self) -> None:
        with self._pending_lock:
            tickets, self._pending = self._pending, []
        started = time.perf_counter()
        try:
            with db.transaction(self._writer) as conn:
                for ticket in tickets:
                    ticket.run_in_savepoint(conn, self._queues)
        except StorageError as exc:
            for ticket in tickets:
                ticket.fail(exc)
            return
        except BaseException as exc:
            for ticket in tickets:
                ticket.fail(StorageError(f"write interrupted: {exc}"))
            raise
        if (gone := self._files_gone()) is not None:
            for ticket in tickets:
                ticket.fail(StorageError(gone))
            return
        self.observe_commit(time.perf_counter() - started)
        for ticket in tickets:
            ticket.committed(self._queues)

    def _files_gone(self) -> str | None:
        """Why the files we write are no longer the ones on disk, or None.

        SQLite writes on into a deleted (or replaced) file without a word, so a commit there
        is not durable: whatever it holds is gone at the next start (failure matrix 16).
        """
        for path, known in self._files.items():
            now = _identity(path)
            if now != known:
                what = "deleted" if now is None else "replaced"
                log.error("%s was %s while the agent had it open", path.name, what)
                return f"{path.name} was {what} while open; restart the agent"
        return None

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads that never waits for the writer (WAL: the last commit)."""
        with self._read_lock:
            try:
                yield self._reader
            except sqlite3.Error as exc:
                raise StorageError(f"read: {exc}") from exc

    def claim(self, destination: str, timeout_seconds: float = 1.0) -> Claimed | None:
        """The oldest ready item of a destination, now claimed; None if none came in time.

        Live sales first: the low-priority lane (backfill, replay) is served only when the
        live queue is empty, so history never makes a sale wait.
        """
        raw = self._get(destination, block=False)
        queue = destination
        if raw is None and destination + LOW_PRIORITY in self._queues:
            raw, queue = (
                self._get(destination + LOW_PRIORITY, block=False),
                destination + LOW_PRIORITY,
            )
        if raw is None:
            raw, queue = self._get(destination, block=True, timeout=timeout_seconds), destination
        if raw is None:
            return None
        claimed = Claimed(
            destination, int(raw["pqid"]), raw["data"], float(raw["timestamp"]), queue
        )
        with self._claimed_lock:
            self._claimed.add((queue, claimed.id))
        return claimed

    def _get(self, queue: str, *, block: bool, timeout: float = 0.0) -> dict[str, Any] | None:
        """persist-queue's get, but a wait is timed by the monotonic clock.

        persist-queue times a blocking get by the wall clock: set back a day, it would wait a
        day (R9). So only its non-blocking get is used, and the wait is ours.
        """
        deadline = time.monotonic() + (timeout if block else 0.0)
        pq = self._queues[queue]
        while True:
            pq.put_event.clear()  # before looking: a put after the look wakes the wait
            try:
                with self._delivery_write():
                    raw: dict[str, Any] = pq.get(block=False, raw=True)
            except Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                pq.put_event.wait(remaining)
                continue
            except sqlite3.Error as exc:
                raise StorageError(f"claim from {queue}: {exc}") from exc
            return raw

    @contextlib.contextmanager
    def _delivery_write(self) -> Iterator[None]:
        """A write of delivery's own (persist-queue's claim, ack, nack) behind waiting sales.

        persist-queue commits on its own connection. Under our writer lock a sale waits on
        that lock, woken at once, instead of in SQLite's busy handler (which sleeps 1, 2, 5,
        10 ms ...); and sales already waiting go first, for a bounded time, so a burst of
        delivery writes never queues in front of a sale and delivery is never starved.
        """
        deadline = time.monotonic() + SALES_FIRST_SECONDS
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.0005)
        with self._write_lock:
            yield

    def ack(self, claimed: Claimed) -> None:
        self._mark(claimed, "ack")

    def release(self, claimed: Claimed) -> None:
        """Back to ready, in its place: nothing is lost when a send is interrupted."""
        self._mark(claimed, "nack")

    def _mark(self, claimed: Claimed, how: str) -> None:
        """ack or nack an item this outbox handed out; NotFoundError for any other id."""
        ticket = (claimed.lane_queue, claimed.id)
        with self._claimed_lock:
            if ticket not in self._claimed:
                raise NotFoundError(f"{claimed.lane_queue}/{claimed.id} was not claimed here")
            self._claimed.discard(ticket)
        try:
            with self._delivery_write():
                getattr(self._queues[claimed.lane_queue], how)(id=claimed.id)
        except sqlite3.Error as exc:
            with self._claimed_lock:
                self._claimed.add(ticket)
            raise StorageError(f"{how} {claimed.lane_queue}/{claimed.id}: {exc}") from exc

    def set_aside(self, claimed: Claimed) -> None:
        """Set an item aside (persist-queue's ack_failed) so the items behind it can flow."""
        self._mark(claimed, "ack_failed")

    def bring_back(self, queue: str, queue_id: int) -> bool:
        """Back to ready: it keeps its place (the lowest id goes first), so order holds.

        Only a set-aside item moves: False when it is no longer set aside (a technician
        released or dead-lettered it meanwhile).
        """
        pq = self._queues[queue]
        putter = cast(sqlite3.Connection, pq._putter)
        try:
            with self._delivery_write(), pq.tran_lock, putter as conn:
                cursor = conn.execute(
                    f"UPDATE {pq._table_name} SET status = ? WHERE _id = ? AND status = ?",
                    (PENDING_STATUSES[1], queue_id, SET_ASIDE_STATUS),
                )
        except sqlite3.Error as exc:
            raise StorageError(f"bring back {queue}/{queue_id}: {exc}") from exc
        if cursor.rowcount != 1:
            return False
        pq.total += 1
        pq.put_event.set()
        return True

    def set_aside_items(
        self, destination: str, limit: int = -1
    ) -> list[tuple[str, int, QueueItem]]:
        """(queue, id, item) of a destination's set-aside items, both lanes, oldest first
        (at most limit of each lane; -1: all)."""
        found = []
        for queue in self.lanes(destination):
            table = self._queues[queue]._table_name
            with self.read() as conn:
                rows = conn.execute(
                    f"SELECT _id, data FROM {table} WHERE status = ? ORDER BY _id LIMIT ?",
                    (SET_ASIDE_STATUS, limit),
                ).fetchall()
            found += [(queue, int(r[0]), decode(r[1])) for r in rows]
        return found

    def lanes(self, destination: str) -> list[str]:
        """The queues of a destination: its own, and its low-priority lane."""
        return [q for q in (destination, destination + LOW_PRIORITY) if q in self._queues]

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue in the file, lanes included."""
        return tuple(self._queues)

    def settle(self, claimed: Claimed, work: Callable[[Transaction], T]) -> T:
        """Run work and delete the claimed item in one transaction (a move to another table)."""
        ticket = (claimed.lane_queue, claimed.id)
        with self._claimed_lock:
            if ticket not in self._claimed:
                raise NotFoundError(f"{claimed.lane_queue}/{claimed.id} was not claimed here")
        table = self._queues[claimed.lane_queue]._table_name

        def move(batch: Transaction) -> T:
            result = work(batch)  # the destination first: a crash between can duplicate only
            batch.conn.execute(f"DELETE FROM {table} WHERE _id = ?", (claimed.id,))
            return result

        result = self.run(move)
        with self._claimed_lock:
            self._claimed.discard(ticket)
        self._queues[claimed.lane_queue]._unack_cache.pop(claimed.id, None)
        return result

    def depth(self, destination: str) -> QueueDepth:
        """How many items wait (and since when) in a destination's queues, both lanes."""
        pending, claimed, low, oldest_seen = 0, 0, 0, []
        for queue in self.lanes(destination):
            table = self._queues[queue]._table_name
            with self.read() as conn:
                # `status < 2` is the ready index's own condition: it counts only ready rows.
                count, oldest = conn.execute(
                    f"SELECT COUNT(*), MIN(timestamp) FROM {table} WHERE status < {CLAIMED_STATUS}"
                ).fetchone()
                (taken,) = conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE status = ?", (CLAIMED_STATUS,)
                ).fetchone()
            pending, claimed = pending + int(count), claimed + int(taken)
            low += int(count) if queue.endswith(LOW_PRIORITY) else 0
            oldest_seen += [oldest] if oldest is not None else []
        return QueueDepth(destination, pending, claimed, min(oldest_seen, default=None), low)

    def queue_status(self, destination: str, queue_id: int) -> int | None:
        """persist-queue's status of one item, None once it has been purged."""
        table = self._queues[destination]._table_name
        with self.read() as conn:
            row = conn.execute(f"SELECT status FROM {table} WHERE _id = ?", (queue_id,)).fetchone()
        return None if row is None else int(row[0])

    def purge_acked(self, chunk_rows: int = PURGE_CHUNK_ROWS) -> int:
        """Delete every acked item: delivered data is not kept as history.

        In chunks, each its own short transaction, so intake never waits behind a long delete.
        """
        removed = 0
        for queue in self._queues.values():
            while True:
                deleted = self.run(functools.partial(_delete_acked, queue._table_name, chunk_rows))
                removed += deleted
                if deleted < chunk_rows:
                    break
                # Python's locks are not fair and the GIL favours the running thread: pause so
                # a waiting intake write gets in between two chunks (P6 in TARGETS.md).
                time.sleep(PURGE_PAUSE_SECONDS)
        return removed

    def claimed_count(self, destination: str, key: str) -> int:
        """Items of one record that a sender holds right now (claimed, not yet acked)."""
        table = self._queues[destination]._table_name
        with self.read() as conn:
            rows = conn.execute(
                f"SELECT data FROM {table} WHERE status = ?", (CLAIMED_STATUS,)
            ).fetchall()
        return sum(1 for (data,) in rows if decode(data).key == key)

    def checkpoint(self) -> None:
        """Fold the WAL into the file and truncate it: deleted bytes leave the -wal too."""
        with self._write_lock:
            db.checkpoint(self._writer)

    def page_counts(self) -> tuple[int, int]:
        """(free pages, all pages) of the outbox file."""
        with self.read() as conn:
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        return free, pages

    def page_bytes(self) -> tuple[int, int]:
        """(bytes the outbox file holds, bytes of free pages inside it that writes reuse)."""
        with self.read() as conn:
            size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        free, pages = self.page_counts()
        return (pages - free) * size, free * size

    def shrink(self, pages_per_step: int = SHRINK_PAGES_PER_STEP) -> int:
        """Hand free pages back to the file system in small steps; returns how many.

        incremental_vacuum moves pages inside the file, so unlike VACUUM it needs no free disk
        space and holds the writer only for one step at a time.
        """
        released = 0
        while (free := self.page_counts()[0]) > 0:
            with self._write_lock:
                try:
                    # executescript: the module's execute() runs this pragma one page only.
                    self._writer.executescript(f"PRAGMA incremental_vacuum({pages_per_step});")
                except sqlite3.Error as exc:
                    raise StorageError(f"incremental vacuum: {exc}") from exc
            now_free = self.page_counts()[0]
            if now_free >= free:
                break  # a file made without auto_vacuum: nothing to hand back this way
            released += free - now_free
            time.sleep(PURGE_PAUSE_SECONDS)
        return released

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        with self._write_lock:
            self._writer.close()
        with self._read_lock:
            self._reader.close()
