"""A damaged store is found at start, moved aside (not deleted), and the agent starts afresh (R4).

Damaged three ways: random bytes over the middle of `outbox.db`; over the middle of its `-wal`
after a SIGKILL (SQLite itself would replay the WAL up to the damage and drop every commit
after it without a word: the agent's own check of the WAL catches it); and over `contacts.db`.
Each time: the file is moved aside, the agent is answering again within 10 s of its start,
health is red, sales go on, and an alert goes out (a webhook digest at start).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.core import db
from tests.conftest import Till, make_receipt
from tests.test_alerts import hook  # noqa: F401 - the webhook receiver fixture

FRESH_START_SECONDS = 10.0


def damage(path, *, at: int = 4096, size: int = 16384) -> None:
    """Random bytes over the file's middle pages, as a bad sector or a torn copy leaves them."""
    length = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(at)
        handle.write(os.urandom(min(length - at, size)))


def fill_and_stop(start_agent):
    agent, till = start_agent()
    for n in range(30):
        till.post("/v1/receipts", make_receipt(f"R-{n}"))
    till.close()
    agent.stop()
    return agent.settings.agent.data_dir


def test_a_damaged_outbox_is_moved_aside_and_health_turns_red(start_agent):
    data_dir = fill_and_stop(start_agent)
    damage(data_dir / "outbox.db")
    started = time.monotonic()
    _, till = start_agent()
    assert time.monotonic() - started < FRESH_START_SECONDS
    moved = list(data_dir.glob("outbox.db.corrupt-*"))
    assert len(moved) == 1
    health = till.get("/v1/health")
    assert health.status_code == 503
    assert health.json()["status"] == "failing"
    components = {c["name"]: c for c in till.get("/v1/status").json()["components"]}
    assert "moved aside" in components["store:outbox.db"]["detail"]
    assert till.post("/v1/receipts", make_receipt("R-after")).status_code == 202  # sales go on


def test_the_next_start_still_reminds_the_technician(start_agent):
    data_dir = fill_and_stop(start_agent)
    damage(data_dir / "outbox.db")
    agent, till = start_agent()
    till.close()
    agent.stop()
    agent, till = start_agent()
    assert till.get("/v1/health").json()["status"] == "degraded"


def test_a_healthy_store_is_left_alone(start_agent):
    data_dir = fill_and_stop(start_agent)
    _, till = start_agent()
    assert till.get("/v1/health").json()["status"] == "ok"
    assert not list(data_dir.glob("*.corrupt-*"))
    assert till.get("/v1/receipts/R-3").status_code == 200


# -- the -wal and the contact cache, under a real `till-agent run` with alerts on -----------


def start_answering(process) -> tuple[float, requests.Response]:
    """Start the agent; (seconds until /v1/health answers, that answer), within 10 s."""
    started = time.monotonic()
    process.start(wait=False)
    while (took := time.monotonic() - started) < FRESH_START_SECONDS:
        try:
            return took, requests.get(process.url + "/v1/health", timeout=0.5)
        except requests.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"no fresh start within {FRESH_START_SECONDS}s: {process.log()}")


def moved_aside(data: Path, name: str) -> list[Path]:
    found = data.glob(f"{name}.corrupt-*")
    return [p for p in found if not p.name.endswith(("-wal", "-shm"))]


def wait_for_alert(received: list[dict[str, Any]], seconds: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while not received:
        assert time.monotonic() < deadline, "no alert was raised"
        time.sleep(0.05)
    return received[0]


@pytest.fixture
def alerted_agent(agent_process, hook):  # noqa: F811 - the fixture imported above
    received, url = hook
    return agent_process({"alerts": {"webhook_url": url}}), received


def sell_and_kill(process, count: int = 60) -> list[str]:
    """Receipts through the API, then SIGKILL: the commits are in the -wal, not yet folded in."""
    process.start()
    till = Till(process.url, process.token)
    ids = [f"W-{n:03d}" for n in range(count)]
    for rid in ids:
        assert till.post("/v1/receipts", make_receipt(rid)).status_code == 202
    till.close()
    process.kill()
    return ids


def middle_of_the_live_frames(wal: Path) -> int:
    """Where the middle frame of the -wal's current frames starts. A -wal that was checkpointed
    and restarted keeps older frames after the current ones (other salts, not read): damage
    there would lose nothing."""
    data = wal.read_bytes()
    page_size = int.from_bytes(data[8:12], "big")
    frames = db._wal_frames(data, page_size, ">" if data[3] == 0x83 else "<")
    live = next((n for n, (valid, _) in enumerate(frames) if not valid), len(frames))
    assert live >= 8, f"only {live} frames in the -wal: too few commits to damage one"
    return db.WAL_HEADER + (live // 2) * (db.WAL_FRAME_HEADER + page_size)


def test_a_damaged_wal_is_caught_moved_aside_and_alerted(alerted_agent, tmp_path):
    process, received = alerted_agent
    sell_and_kill(process)
    data = tmp_path / "data"
    wal = data / "outbox.db-wal"
    damage(wal, at=middle_of_the_live_frames(wal), size=4096)  # a frame there: later commits
    took, health = start_answering(process)
    moved = moved_aside(data, "outbox.db")
    assert len(moved) == 1, "SQLite alone would have dropped the commits after the damage"
    assert (data / f"{moved[0].name}-wal").exists()  # the -wal kept for salvage
    assert health.status_code == 503
    assert health.json()["status"] == "failing"
    alert = wait_for_alert(received)
    (store,) = alert["damagedStores"]
    assert store["file"] == "outbox.db"
    assert "-wal damaged" in store["detail"]
    assert "damaged store: outbox.db" in alert["summary"]
    till = Till(process.url, process.token)
    assert till.post("/v1/receipts", make_receipt("W-after")).status_code == 202  # sales go on
    till.close()
    assert took < FRESH_START_SECONDS


def test_a_damaged_contact_cache_is_moved_aside_and_alerted(alerted_agent, tmp_path):
    process, received = alerted_agent
    ids = sell_and_kill(process, count=5)
    assert process.process is not None
    process.start()
    assert process.terminate() == 0  # a clean stop: contacts.db whole, its WAL folded in
    cache = tmp_path / "data" / "contacts.db"
    assert cache.stat().st_size > 4096
    damage(cache, size=cache.stat().st_size)
    received.clear()
    took, health = start_answering(process)
    assert len(moved_aside(cache.parent, "contacts.db")) == 1
    assert health.status_code == 503
    alert = wait_for_alert(received)
    assert [s["file"] for s in alert["damagedStores"]] == ["contacts.db"]
    till = Till(process.url, process.token)
    assert till.get(f"/v1/receipts/{ids[0]}").status_code == 200  # the outbox is untouched
    assert till.post("/v1/receipts", make_receipt("C-after")).status_code == 202
    till.close()
    assert took < FRESH_START_SECONDS


# -- the WAL check on its own ----------------------------------------------------------------

FRAME = 24 + 4096


def a_wal(tmp_path) -> bytes:
    """A -wal of 40 commits, as a crash leaves it (read while the connection is open)."""
    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x BLOB)")
    for _ in range(40):
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(3000),))
    data = (tmp_path / "w.db-wal").read_bytes()
    conn.close()
    return data


def flipped(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0xFF
    return bytes(damaged)


def test_the_wal_check_tells_damage_from_what_a_power_cut_leaves(tmp_path):
    wal = a_wal(tmp_path)
    assert db.check_wal(wal) is None
    assert db.check_wal(wal[: len(wal) - FRAME // 2]) is None  # a torn tail
    assert db.check_wal(flipped(wal, len(wal) - 100)) is None  # the last commit, maybe unsynced
    middle = db.check_wal(flipped(wal, 32 + 10 * FRAME + 500))  # a page of the 11th frame
    assert middle is not None
    assert "damaged at frame 11" in middle
    header = db.check_wal(flipped(wal, 12))  # the header's checkpoint sequence
    assert header is not None
    assert "header damaged" in header
