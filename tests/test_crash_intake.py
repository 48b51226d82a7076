"""SIGKILL at random moments of concurrent intake: nothing acknowledged lost, nothing half-written.

Failure matrix A1 (killed before COMMIT: no 2xx, no partial row) and A2 (killed after COMMIT,
before the 2xx: the POS's retry is a duplicate, not a second purchase). CI runs a few cycles;
`make test-long` runs 200.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import requests

from tests.conftest import Till, make_receipt
from tests.ledger_probe import LedgerProbe

CLIENTS = 4


def post_until_killed(
    url: str, token: str, prefix: str, acknowledged: list[str], stop: threading.Event
) -> None:
    till = Till(url, token)
    n = 0
    while not stop.is_set():
        receipt_id = f"{prefix}-{n}"
        try:
            if till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202:
                acknowledged.append(receipt_id)
        except requests.RequestException:
            break  # the agent died under us: this one may or may not have been stored
        n += 1
    till.close()


def one_cycle(process, cycle: int, rng: random.Random, acknowledged: list[str]) -> None:
    process.start()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=post_until_killed,
            args=(process.url, process.token, f"c{cycle}t{t}", acknowledged, stop),
        )
        for t in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(0.05, 0.4))
    process.kill()
    stop.set()
    for thread in threads:
        thread.join(10)


def check_invariants(process, acknowledged: list[str]) -> None:
    """Every 202 is there; every stored receipt is in both queues exactly once."""
    process.start()
    till = Till(process.url, process.token)
    for receipt_id in acknowledged:
        assert till.get(f"/v1/receipts/{receipt_id}").status_code == 200, receipt_id
    resend = till.post("/v1/receipts", make_receipt(acknowledged[-1]))
    assert resend.json()["status"] == "duplicate"
    till.close()
    assert process.terminate() == 0
    with LedgerProbe(process.raw["agent"]["data_dir"]) as ledger:
        receipts = len(ledger.receipt_ids())
        for queue in ("engage", "loaded"):
            rows = ledger.queue_count(queue)
            assert rows == receipts, (queue, rows, receipts)
        assert ledger.quick_check() == "ok"
    assert len(acknowledged) >= 1


def run_cycles(agent_process, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    process = agent_process()
    acknowledged: list[str] = []
    for cycle in range(cycles):
        one_cycle(process, cycle, rng, acknowledged)
    check_invariants(process, acknowledged)


def test_sigkill_during_intake_loses_nothing_acknowledged(agent_process):
    run_cycles(agent_process, cycles=10, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sigkill_during_intake_200_cycles(agent_process):
    run_cycles(agent_process, cycles=200, seed=2)
