"""A crash in the middle of a store migration (failure matrix row 24): the next start ends it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.core import db

STEPS = [
    "CREATE TABLE a (n INTEGER)",
    # Long enough to be killed inside: a big table filled in the step's own transaction.
    """CREATE TABLE b (n INTEGER, pad TEXT);
    INSERT INTO b WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1500000)
    SELECT n, hex(randomblob(16)) FROM c""",
    "CREATE INDEX b_by_n ON b (n)",
]
CHILD = """
import sys
from pathlib import Path
from agent.core import db
from tests.test_migration_crash import STEPS
conn = db.connect(Path(sys.argv[1]))
print("migrating", flush=True)
db.migrate(conn, STEPS)
"""


def test_a_migration_killed_midway_is_finished_by_the_next_start(tmp_path: Path):
    path = tmp_path / "store.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"migrating"
    time.sleep(0.3)  # inside step 2's transaction (it takes seconds)
    assert child.poll() is None, "the migration finished before the kill: make step 2 longer"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()

    conn = db.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # step 2 left no trace
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "a" in tables
        assert "b" not in tables
        db.quick_check(conn)
        assert db.migrate(conn, STEPS) == 3
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("SELECT COUNT(*) FROM b").fetchone()[0] == 1_500_000
    finally:
        conn.close()
