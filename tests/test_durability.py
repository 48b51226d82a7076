"""Durable before acknowledged: SIGKILL after a 202 loses nothing; a full store answers 503."""

from __future__ import annotations

from tests.conftest import Till, make_receipt
from tests.ledger_probe import LedgerProbe


def test_receipt_acknowledged_before_sigkill_is_there_after_restart(agent_process):
    process = agent_process()
    process.start()
    till = Till(process.url, process.token)
    accepted = [f"R-{n:04d}" for n in range(20)]
    for receipt_id in accepted:
        assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202
    process.kill()  # right after the last 202: no clean shutdown, no checkpoint
    till.close()
    process.start()
    till = Till(process.url, process.token)
    for receipt_id in accepted:
        state = till.get(f"/v1/receipts/{receipt_id}").json()
        assert {d["state"] for d in state["destinations"]} == {"queued"}
    status = till.get("/v1/status").json()
    assert {d["name"]: d["depth"] for d in status["destinations"]} == {"engage": 20, "loaded": 20}
    assert till.post("/v1/receipts", make_receipt("R-0000")).json()["status"] == "duplicate"
    till.close()


def test_item_claimed_when_the_agent_died_is_ready_again(tmp_path, start_agent):
    agent, till = start_agent()
    till.post("/v1/receipts", make_receipt())
    assert agent.outbox.claim("loaded", timeout_seconds=1) is not None
    till.close()
    agent.stop()  # the claim was never acked or released
    agent, till = start_agent()
    assert agent.outbox.depth("loaded").pending == 1


def test_full_store_answers_503_and_never_a_2xx_without_a_durable_write(start_agent):
    agent, till = start_agent({"storage": {"max_size_mb": 1, "retry_after_seconds": 7}})
    outcomes: dict[str, int] = {}
    for n in range(400):
        receipt = make_receipt(f"R-{n:04d}", lines=40)
        response = till.post("/v1/receipts", receipt)
        outcomes[receipt["uniqueReceiptId"]] = response.status_code
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "7"
            assert response.json()["error"]["code"] == "storage_unavailable"
            break
    assert 503 in outcomes.values(), "the size cap was never reached"
    assert requests_health(till) == 503
    for receipt_id, status in outcomes.items():
        found = till.get(f"/v1/receipts/{receipt_id}").status_code
        assert found == (200 if status == 202 else 404), (receipt_id, status)
    with LedgerProbe(agent) as ledger:
        assert ledger.quick_check() == "ok"


def requests_health(till: Till) -> int:
    return till.get("/v1/health").status_code


def test_store_recovers_by_itself_when_space_comes_back(start_agent):
    agent, till = start_agent({"storage": {"max_size_mb": 1}})
    for n in range(400):
        if till.post("/v1/receipts", make_receipt(f"R-{n:04d}", lines=40)).status_code == 503:
            break
    assert requests_health(till) == 503
    # A smaller receipt still fits in the pages the failed one could not fill.
    for _ in range(3):
        claimed = agent.outbox.claim("loaded", timeout_seconds=0.1)
        if claimed:
            agent.outbox.ack(claimed)
    agent.outbox.purge_acked()
    assert till.post("/v1/receipts", make_receipt("R-small", lines=1)).status_code == 202
    assert requests_health(till) == 200


def test_stop_is_prompt_with_an_idle_keep_alive_connection_open(start_agent):
    import time

    agent, till = start_agent()
    assert till.get("/v1/health").status_code == 200  # the session keeps its connection open
    started = time.monotonic()
    agent.stop()
    assert time.monotonic() - started < 2.0
    assert not agent.server._thread.is_alive()
