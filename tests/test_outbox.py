"""The outbox over real SQLite files: pragmas checked, atomic writes, crash resume, reopen."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from agent.core import db
from agent.core.errors import NotFoundError, StorageError
from agent.ledger.item import QueueItem
from agent.ledger.outbox import Outbox
from tests.ledger_probe import LedgerProbe


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path, ["a", "b"])
    yield box
    box.close()


def test_every_connection_is_wal_synchronous_full_and_secure_delete(outbox):
    connections = [outbox._writer, outbox._reader]
    for queue in outbox._queues.values():
        connections += [queue._getter, queue._putter]
    for conn in connections:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_check_pragmas_refuses_a_connection_that_is_not_durable(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    with pytest.raises(StorageError, match="synchronous is 1"):
        db.check_pragmas(conn)
    conn.close()


def put(box, destination, item):
    return box.run(lambda batch: batch.put(destination, item))


def item(n, **more):
    """A queue item carrying n (and more) in its body."""
    return QueueItem("receipt", f"R-{n}", 1, {"n": n, **more})


def test_a_write_puts_into_every_queue_or_none(outbox):
    def failing(batch):
        batch.put("a", item(1))
        batch.put("b", item(1))
        raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        outbox.run(failing)
    assert outbox.depth("a").pending == 0
    assert outbox.depth("b").pending == 0
    outbox.run(lambda batch: (batch.put("a", item(2)), batch.put("b", item(2))))
    assert outbox.depth("a").pending == outbox.depth("b").pending == 1


def test_group_commit_keeps_each_callers_outcome_apart(outbox):
    results: dict[int, object] = {}

    def writer(n: int) -> None:
        def work(batch):
            batch.put("a", item(n))
            if n % 5 == 0:
                raise ValueError(n)
            return n

        try:
            results[n] = outbox.run(work)
        except ValueError as exc:
            results[n] = exc

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = {n for n, r in results.items() if isinstance(r, ValueError)}
    assert failed == {n for n in range(40) if n % 5 == 0}
    stored = set()
    while (claimed := outbox.claim("a", timeout_seconds=0.05)) is not None:
        stored.add(claimed.item.body["n"])
        outbox.ack(claimed)
    assert stored == set(range(40)) - failed


def test_items_keep_their_order_and_content_across_reopen(tmp_path):
    box = Outbox(tmp_path, ["a"])
    for n in range(50):
        put(box, "a", item(n, text="åäö ✓"))
    box.close()
    box = Outbox(tmp_path, ["a"])
    seen = []
    while (claimed := box.claim("a", timeout_seconds=0.05)) is not None:
        seen.append(claimed.item.body["n"])
        assert claimed.item.body["text"] == "åäö ✓"
        box.ack(claimed)
    box.close()
    assert seen == list(range(50))


def test_claimed_but_unacked_item_comes_back_after_reopen(tmp_path):
    box = Outbox(tmp_path, ["a"])
    put(box, "a", item(1))
    assert box.claim("a", timeout_seconds=0.1) is not None
    assert box.depth("a").claimed == 1
    box.close()  # as after a crash: never acked
    box = Outbox(tmp_path, ["a"])
    claimed = box.claim("a", timeout_seconds=0.1)
    assert claimed is not None
    assert claimed.item == item(1)
    box.close()


def test_release_puts_the_item_back_first_in_line(outbox):
    put(outbox, "a", item(1))
    put(outbox, "a", item(2))
    first = outbox.claim("a", timeout_seconds=0.1)
    outbox.release(first)
    assert outbox.claim("a", timeout_seconds=0.1).item == item(1)


def test_ack_of_an_unknown_id_raises(outbox):
    from agent.ledger.outbox import Claimed

    with pytest.raises(NotFoundError):
        outbox.ack(Claimed("a", 999, item(0), 0.0))


def test_replace_only_rewrites_items_that_have_not_left(outbox):
    queue_id = put(outbox, "a", item(1))
    assert outbox.run(lambda batch: batch.replace("a", queue_id, item(2))) is True
    claimed = outbox.claim("a", timeout_seconds=0.1)
    assert claimed.item == item(2)
    assert outbox.run(lambda batch: batch.replace("a", queue_id, item(3))) is False


def test_purge_acked_deletes_delivered_rows(outbox):
    put(outbox, "a", item(1))
    outbox.ack(outbox.claim("a", timeout_seconds=0.1))
    assert outbox.purge_acked() == 1
    with LedgerProbe(outbox.path) as ledger:
        assert ledger.queue_count("a") == 0


def test_a_claim_reads_the_ready_index_never_the_delivered_rows(outbox):
    """persist-queue's own claim statement, planned by SQLite, walks only the ready rows: with
    the delivered rows left for the purge, a scan made each claim slower (P6)."""
    for name in outbox.queues:
        queue = outbox._queues[name]
        with outbox.read() as conn:
            plan = conn.execute(f"EXPLAIN QUERY PLAN {queue._sql_select(0)}").fetchall()
        assert [step[-1] for step in plan] == [
            f"SEARCH ack_queue_{name} USING INDEX ack_queue_{name}_ready (_id>?)"
        ]


def test_a_file_from_before_the_ready_index_gets_it_and_keeps_its_items(tmp_path):
    import persistqueue
    import persistqueue.serializers.json as json_serializer

    old = persistqueue.SQLiteAckQueue(
        str(tmp_path), name="a", db_file_name="outbox.db", serializer=json_serializer
    )
    old.put({"kind": "receipt", "key": "R-1", "revision": 1, "body": {"n": 1}, "personal": None})
    old.close()
    box = Outbox(tmp_path, ["a"])
    try:
        with box.read() as conn:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "ack_queue_a_ready" in names
        claimed = box.claim("a", timeout_seconds=0.1)
        assert claimed is not None
        assert claimed.item == item(1)
    finally:
        box.close()


def written_by_this_process() -> int:
    """What this process has caused to be written to storage (/proc/self/io write_bytes)."""
    with open("/proc/self/io", encoding="ascii") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes:"))


@pytest.mark.linux_only("reads /proc/self/io, which only Linux has")
def test_a_savepoints_undo_journal_is_not_written_to_a_temp_file(outbox):
    """Each piece of a group commit runs in a SAVEPOINT; past 64 KiB SQLite spilled its undo
    journal (the pages the piece changes, as they were) to a temp file, so a sale's pages were
    written twice (P1: 248 KiB a receipt, 133 KiB with the journal in memory). Here each piece
    rewrites 40 rows of 3 KB that exist already, one page each (160 KiB of journal)."""
    outbox.migrate(["CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)"])
    rows = [(n, bytes(3000)) for n in range(40)]
    outbox.run(lambda batch: batch.conn.executemany("INSERT INTO t VALUES (?, ?)", rows))
    wal = outbox.path.with_name(outbox.path.name + "-wal")
    before, wal_before = written_by_this_process(), wal.stat().st_size
    for n in range(1, 6):
        data = bytes([n]) * 3000
        outbox.run(lambda batch, d=data: batch.conn.execute("UPDATE t SET data = ?", (d,)))
    written, wal_grew = written_by_this_process() - before, wal.stat().st_size - wal_before
    assert wal_grew >= 5 * 40 * 4096  # every piece's pages went to the WAL
    assert written < 1.3 * wal_grew, (written, wal_grew)


def test_items_are_stored_as_json_never_pickle(outbox):
    put(outbox, "a", item(1))
    with outbox.read() as conn:
        (data,) = conn.execute("SELECT data FROM ack_queue_a").fetchone()
    assert bytes(data) == (
        b'{"kind": "receipt", "key": "R-1", "revision": 1, "body": {"n": 1}, "personal": null}'
    )


def test_undelivered_counts_every_queue_even_disabled_ones(start_agent):
    from agent import app

    agent, till = start_agent()
    from tests.conftest import make_receipt

    till.post("/v1/receipts", make_receipt())
    till.close()
    agent.stop()
    assert app.undelivered(agent.settings) == {"engage": 1, "loaded": 1}


def test_purge_acked_works_in_chunks_and_leaves_pending_items(outbox):
    for n in range(25):
        put(outbox, "a", item(n))
    for _ in range(20):
        outbox.ack(outbox.claim("a", timeout_seconds=0.1))
    assert outbox.purge_acked(chunk_rows=7) == 20
    assert outbox.depth("a").pending == 5


def test_shrink_hands_free_pages_back_after_a_purge(outbox):
    outbox.run(lambda b: [b.put("a", item(n, blob="x" * 3000)) for n in range(300)])
    for _ in range(300):
        outbox.ack(outbox.claim("a", timeout_seconds=0.1))
    outbox.purge_acked()
    outbox.checkpoint()
    before = outbox.path.stat().st_size
    assert outbox.shrink(pages_per_step=50) > 200
    outbox.checkpoint()
    assert outbox.path.stat().st_size < before / 2
    assert outbox.page_counts()[0] == 0
