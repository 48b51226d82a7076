"""A restart with a smaller size limit than the store already holds (failure matrix row 46)."""

from __future__ import annotations

import logging

from agent import app
from agent.connectors import KINDS
from agent.core import config
from tests.conftest import Till, base_config, make_receipt, merged


def test_a_smaller_limit_than_the_content_blocks_nothing_loses_nothing_and_warns(tmp_path, caplog):
    def start(max_size_mb: int) -> tuple[app.Agent, Till]:
        raw = merged(base_config(tmp_path), {"storage": {"max_size_mb": max_size_mb}})
        agent = app.start(config.from_mapping(raw, {}, KINDS))
        return agent, Till(agent.url, agent.token)

    agent, till = start(64)
    accepted = [f"R-{n:04d}" for n in range(250)]
    for receipt_id in accepted:
        assert till.post("/v1/receipts", make_receipt(receipt_id, lines=40)).status_code == 202
    till.close()
    agent.stop()
    assert (tmp_path / "data" / "outbox.db").stat().st_size > 1024 * 1024

    with caplog.at_level(logging.WARNING, logger="agent.core.db"):
        agent, till = start(1)  # starts: the limit does not block the agent
    try:
        assert "already larger than storage.max_size_mb" in caplog.text
        assert till.get("/v1/health").status_code == 200
        depths = {d["name"]: d["depth"] for d in till.get("/v1/status").json()["destinations"]}
        assert depths == {"engage": 250, "loaded": 250}  # nothing lost
        outcomes = [
            till.post("/v1/receipts", make_receipt(f"N-{n:04d}", lines=40)).status_code
            for n in range(100)
        ]
        assert set(outcomes) <= {202, 503}
        assert 503 in outcomes  # new sales refused once the free pages are used up ...
        for n, status in enumerate(outcomes):  # ... and no 2xx without the write
            found = till.get(f"/v1/receipts/N-{n:04d}").status_code
            assert found == (200 if status == 202 else 404)
    finally:
        till.close()
        agent.stop()
