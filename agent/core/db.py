"""Open SQLite the one durable way (WAL, synchronous=FULL, secure_delete) and migrate it."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.core.errors import StorageError
from agent.core.failpoints import hooked

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
SYNCHRONOUS_FULL = 2
SYNCHRONOUS_NORMAL = 1
SYNCHRONOUS_OFF = 0
NO_FSYNC_HOOK = "storage.no_fsync"  # a test hook (agent/core/failpoints.py), never set on a till
SECURE_DELETE_ON = 1
WAL_HEADER, WAL_FRAME_HEADER = 32, 24
WAL_MAGIC_BIG, WAL_MAGIC_LITTLE = 0x377F0683, 0x377F0682  # the byte order of its checksums


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
    conn.execute(f"PRAGMA synchronous={synchronous_level(durable)}")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA foreign_keys=ON")
    if max_size_mb is not None:
        _cap_size(conn, max_size_mb)
    check_pragmas(conn, journal_mode=mode, durable=durable)


def synchronous_level(durable: bool) -> int:
    """FULL: a commit is an fsync. durable=False only for a replica that can be fetched again
    (the contact cache): WAL with synchronous=NORMAL stays consistent, but a power cut may undo
    its last few commits. OFF only under the power-loss test's control hook."""
    if hooked(NO_FSYNC_HOOK):
        return SYNCHRONOUS_OFF
    return SYNCHRONOUS_FULL if durable else SYNCHRONOUS_NORMAL


def savepoints_in_memory(conn: sqlite3.Connection) -> None:
    """Keep a SAVEPOINT's undo journal (and temporary tables) in memory, never in a temp file.

    SQLite spills a savepoint's journal to a temporary file once it passes 64 KiB; a group
    commit runs each caller's work in a SAVEPOINT, and a 10-line receipt's ledger rows and two
    queue items touch about 25 pages (~100 KiB): each sale wrote that much again to a file
    nobody reads (docs/performance.md, "Profile of intake"). The journal only serves
    ROLLBACK TO within the open transaction; durability is the WAL's fsync'd commit alone.
    Only for a writer whose transactions are small: its sorts stay in memory too.
    """
    conn.execute("PRAGMA temp_store=MEMORY")


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
    expected = synchronous_level(durable)
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
    wal = Path(f"{path}-wal")
    damage = check_wal(wal.read_bytes()) if wal.exists() else None
    if damage is not None:
        return damage
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if result == "ok" else str(result)


def check_wal(data: bytes) -> str | None:
    """What is wrong with a -wal that SQLite would read only in part, or None.

    SQLite replays a WAL up to its first frame whose checksum fails and ignores the rest, and
    ignores a WAL whose header is bad, without a word: damage there silently drops every commit
    after it. Two valid commit frames after a bad frame prove the damage hit synced data
    (synchronous=FULL: a commit is fsync'd before the next transaction starts, and the first of
    them may close the damaged transaction itself, which a power cut may leave half written); a
    header is fsync'd before any frame is written, so one valid commit after it is enough. A
    torn tail, which a power cut leaves, has no commit after it and is fine.
    Format: sqlite.org/fileformat2.html#walformat.
    """
    if len(data) < WAL_HEADER + WAL_FRAME_HEADER:
        return None
    magic, _, page_size, _, _, _, seed1, seed2 = struct.unpack(">8I", data[:WAL_HEADER])
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return None  # no frame can be told apart: nothing to compare
    known = magic in (WAL_MAGIC_BIG, WAL_MAGIC_LITTLE)
    for order in [">" if magic == WAL_MAGIC_BIG else "<"] if known else [">", "<"]:
        checks = _wal_frames(data, page_size, order)
        if known and _wal_checksum(data[:24], (0, 0), order) == (seed1, seed2):
            return _damaged_frame(checks)
        commits = sum(1 for valid, commit in checks if valid and commit)
        if commits:
            return f"-wal header damaged: {commits} commits after it unreadable"
    return None


def _wal_frames(data: bytes, page_size: int, order: str) -> list[tuple[bool, bool]]:
    """(valid, is a commit) for each whole frame, each checked against the checksum stored in
    the frame before it, so that the frames after a damaged one are judged on their own."""
    salts = data[16:24]
    seed = struct.unpack(">2I", data[24:WAL_HEADER])
    frame = WAL_FRAME_HEADER + page_size
    checks = []
    for start in range(WAL_HEADER, len(data) - frame + 1, frame):
        page_number, commit = struct.unpack(">2I", data[start : start + 8])
        stored = struct.unpack(">2I", data[start + 16 : start + WAL_FRAME_HEADER])
        # Other salts: a frame from before the WAL was restarted (SQLite does not read it), or a
        # damaged header; either way, SQLite's reading ends there.
        body = data[start : start + 8] + data[start + WAL_FRAME_HEADER : start + frame]
        valid = (
            data[start + 8 : start + 16] == salts
            and page_number != 0
            and _wal_checksum(body, seed, order) == stored
        )
        checks.append((valid, commit != 0))
        seed = stored
    return checks


def _damaged_frame(checks: list[tuple[bool, bool]]) -> str | None:
    first_bad = next((n for n, (valid, _) in enumerate(checks) if not valid), None)
    if first_bad is None:
        return None
    commits_after = sum(1 for valid, commit in checks[first_bad + 1 :] if valid and commit)
    if commits_after < 2:
        return None  # a torn tail, or frames left from before the WAL was restarted
    return f"-wal damaged at frame {first_bad + 1}: {commits_after} commits after it unreadable"


def _wal_checksum(data: bytes, seed: tuple[int, int], order: str) -> tuple[int, int]:
    """SQLite's WAL checksum: 32-bit words in the WAL's byte order, summed in pairs."""
    s0, s1 = seed
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


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
