"""A damaged store is found at start, moved aside (not deleted), and the agent starts afresh."""

from __future__ import annotations

import os

from tests.conftest import make_receipt


def damage(path) -> None:
    """Random bytes over the file's middle pages, as a bad sector or a torn copy leaves them."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(4096)
        handle.write(os.urandom(min(size - 4096, 16384)))


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
    _, till = start_agent()
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
