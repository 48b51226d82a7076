"""P6: purging 100,000 delivered items, and the intake latency while it runs."""

from __future__ import annotations

import threading
import time

import pytest

from agent import crypto
from agent.outbox import ACKED_STATUS, Outbox
from tests.conftest import Till, make_receipt
from tests.perf.bench import summary_ms, write_results

DELIVERED = 100_000


def prefill_delivered(data_dir, destinations: list[str]) -> None:
    """100,000 items that delivery has acked, as an outbox looks after a busy week."""
    crypto.load_or_create(data_dir / "keyring.json", may_create=True)
    box = Outbox(data_dir, destinations)
    per_queue = DELIVERED // len(destinations)
    item = {"kind": "receipt", "key": "", "revision": 1, "body": make_receipt(), "personal": None}
    for destination in destinations:
        for start in range(0, per_queue, 5000):

            def fill(batch, d=destination, s=start):
                for n in range(s, min(s + 5000, per_queue)):
                    batch.put(d, {**item, "key": f"R-{n}"})

            box.run(fill)

        def mark_acked(batch, d=destination):
            batch.conn.execute(f"UPDATE ack_queue_{d} SET status = ?", (ACKED_STATUS,))

        box.run(mark_acked)
    box.close()


@pytest.mark.perf
def test_p6_purge_and_intake_during_it(agent_process, tmp_path):
    process = agent_process({"storage": {"max_size_mb": 8192}})
    prefill_delivered(tmp_path / "data", ["engage", "loaded"])
    process.start()
    till = Till(process.url, process.token)
    samples: list[float] = []
    purging = threading.Event()
    done = threading.Event()

    def post_while_purging() -> None:
        n = 0
        while not done.is_set():
            receipt = make_receipt(f"LIVE-{n:06d}", lines=10)
            started = time.perf_counter()
            assert till.post("/v1/receipts", receipt).status_code == 202
            if purging.is_set():
                samples.append(time.perf_counter() - started)
            n += 1

    poster = threading.Thread(target=post_while_purging)
    poster.start()
    purger = Till(process.url, process.token)
    purging.set()
    started = time.perf_counter()
    report = purger.post("/v1/privacy/purge", {}).json()
    purge_seconds = time.perf_counter() - started
    done.set()
    poster.join()
    till.close()
    purger.close()
    assert report["delivered_deleted"] == DELIVERED
    latency = summary_ms(samples)
    rows = [
        {
            "figure": "purge 100,000 delivered (s)",
            "value": round(purge_seconds, 2),
            "target": "<= 5",
            "met": purge_seconds <= 5,
        },
        {
            "figure": "intake p99 during purge (ms)",
            "value": latency["p99_ms"],
            "target": "<= 50",
            "met": latency["p99_ms"] <= 50,
        },
        {
            "figure": "intake p50 during purge (ms)",
            "value": latency["p50_ms"],
            "target": "-",
            "met": True,
        },
        {
            "figure": "receipts taken during purge",
            "value": len(samples),
            "target": "-",
            "met": True,
        },
    ]
    write_results("p6_purge", rows, {"intake_during_purge": latency})
    assert process.terminate() == 0
