"""Open SQLite the one durable way (WAL, synchronous=FULL, secure_delete) and migrate it."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.errors import StorageError

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
SYNCHRONOUS_FULL = 2
SYNCHRONOUS_NORMAL = 1
SECURE_DELETE_ON = 1


def connect(
    path: Path,
    *,
    busy_timeout_seconds: float = 5.0,
    max_size_mb: int | None = None,
    durable: bool = True,
) -> sqlite3.Connection:
    """A connection with the pragmas every store needs, each read back and checked.

    isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in transaction()), so a
    write never upgrades a read lock mid-way and nothing commits behind our back.
    """
    try:
        conn = sqlite3.connect(
            path,
            timeout=busy_timeout_seconds,
            isolation_level=None,
            check_same_thread=False,
        )
        apply_pragmas(conn, max_size_mb=max_size_mb, durable=durable)
    except sqlite3.Error as exc:
        raise StorageError(f"open {path.name}: {exc}") from exc
    return conn


def apply_pragmas(
    conn: sqlite3.Connection, *, max_size_mb: int | None = None, durable: bool = True
) -> None:
    """WAL + synchronous=FULL (durable commit) + secure_delete=ON (deleted bytes are zeroed).

    auto_vacuum=INCREMENTAL takes effect only on a new file, before its first table: free pages
    can then be handed back in small steps instead of a VACUUM that blocks every writer.
    """
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    # durable=False only for a replica that can be fetched again (the contact cache): WAL with
    # synchronous=NORMAL stays consistent, but a power cut may undo its last few commits.
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA foreign_keys=ON")
    if max_size_mb is not None:
        _cap_size(conn, max_size_mb)
    check_pragmas(conn, journal_mode=mode, durable=durable)


def _cap_size(conn: sqlite3.Connection, max_size_mb: int) -> None:
    """max_page_count; a file already above the cap keeps its size (SQLite will not shrink it)."""
    wanted = max_pages(max_size_mb, conn)
    granted = int(conn.execute(f"PRAGMA max_page_count={wanted}").fetchone()[0])
    if granted > wanted:
        log.warning(
            "the store is already larger than storage.max_size_mb (%d MB): nothing is lost, "
            "but new sales are refused with 503 until delivered items are purged",
            max_size_mb,
        )


def check_pragmas(
    conn: sqlite3.Connection, *, journal_mode: str | None = None, durable: bool = True
) -> None:
    """Read the durability pragmas back: a libsqlite3 that ignores them must not run silently."""
    mode = journal_mode or conn.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
    secure_delete = conn.execute("PRAGMA secure_delete").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(f"journal_mode is {mode}, expected wal")
    expected = SYNCHRONOUS_FULL if durable else SYNCHRONOUS_NORMAL
    if synchronous != expected:
        raise StorageError(f"synchronous is {synchronous}, expected {expected}")
    if secure_delete != SECURE_DELETE_ON:
        raise StorageError(f"secure_delete is {secure_delete}, expected 1 (ON)")


def max_pages(max_size_mb: int, conn: sqlite3.Connection) -> int:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0] or PAGE_SIZE
    return max(1, max_size_mb * 1024 * 1024 // int(page_size))


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (fsync'd: synchronous=FULL), ROLLBACK on any error."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise StorageError(f"begin: {exc}") from exc
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as exc:
        _rollback(conn)
        if isinstance(exc, sqlite3.Error):
            raise StorageError(f"write: {exc}") from exc
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        # A failed COMMIT (SQLITE_FULL, I/O error) may already have rolled back.
        log.debug("rollback after a failed transaction found nothing to undo")


def migrate(conn: sqlite3.Connection, steps: Sequence[str]) -> int:
    """Apply the migration steps past PRAGMA user_version, each in its own transaction."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for version, script in enumerate(steps[current:], start=current + 1):
        with transaction(conn):
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
        log.info("migrated store to version %d", version)
    return len(steps)


def _statements(script: str) -> list[str]:
    """The statements of a script; a trigger's body (BEGIN ...; END) stays one statement."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    return statements


def quick_check(conn: sqlite3.Connection) -> None:
    """Raise StorageError when SQLite's quick_check finds the file damaged."""
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise StorageError(f"quick_check: {exc}") from exc
    if result != "ok":
        raise StorageError(f"quick_check: {result}")


def check_file(path: Path) -> str | None:
    """None if the database file (and its WAL) reads back whole; else what is wrong with it."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if result == "ok" else str(result)


def move_aside(path: Path, stamp: str) -> Path:
    """Rename a damaged database and its -wal/-shm out of the way (kept for salvage)."""
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.rename(Path(f"{target}{suffix}"))
    path.rename(target)
    return target


def checkpoint(conn: sqlite3.Connection) -> None:
    """Fold the WAL into the database file and truncate it to zero bytes."""
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.Error as exc:
        raise StorageError(f"checkpoint: {exc}") from exc
    if busy:
        log.warning("wal checkpoint could not complete: a reader was busy")
