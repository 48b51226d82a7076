"""P6: purging 100,000 items delivered by the agent, and the intake latency while it runs."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from agent.sandbox import SandboxCloud
from tests.conftest import Till, make_receipt
from tests.perf.bench import delete_seconds, post_receipts, queued, summary_ms, write_results

DELIVERED = int(os.environ.get("BENCH_P6_DELIVERED", "100000"))
UNLIMITED = 1_000_000  # requests per second: the sandbox's and the agent's, so nothing waits
LIVE_IDS = [f"LIVE-{n:06d}" for n in range(50_000)]  # the receipts a till sells during the purge


def delivered_config(cloud: SandboxCloud) -> dict[str, object]:
    """Delivery on to the sandbox's Engage alone; the timed purge far off (the test runs it)."""
    return {
        "storage": {"max_size_mb": 8192},
        "privacy": {"purge_interval_minutes": 1440},
        "delivery": {"enabled": True},
        "destinations": {
            "engage": {"base_url": cloud.url, "requests_per_second": UNLIMITED},
            "loaded": {"enabled": False},
        },
    }


def wait_delivered(cloud: SandboxCloud, till: Till, timeout_seconds: float = 3600) -> None:
    """Until the cloud holds every receipt and the agent's queue is empty (every item acked)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if len(cloud.engage.receipts) >= DELIVERED and queued(till.get("/v1/status").json()) == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"delivered {len(cloud.engage.receipts)} of {DELIVERED}")


def mean_item_bytes(data_dir) -> int:
    """The mean stored size of an acked item, read from the agent's outbox (read-only)."""
    conn = sqlite3.connect(f"file:{data_dir / 'outbox.db'}?mode=ro", uri=True)
    try:
        (size,) = conn.execute("SELECT avg(length(data)) FROM ack_queue_engage").fetchone()
    finally:
        conn.close()
    return round(size)


def purge_under_intake(process) -> tuple[float, dict[str, int], list[float]]:
    """`POST /v1/privacy/purge` while a till keeps selling: (seconds, report, intake samples)."""
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
    return purge_seconds, report, samples


def row(figure: str, value: float, target: str, met: bool = True) -> dict[str, object]:
    return {"figure": figure, "value": value, "target": target, "met": met}


@pytest.mark.perf
@pytest.mark.timeout(5400)
def test_p6_purge_and_intake_during_it(agent_process, tmp_path):
    """100,000 receipts posted through the API and delivered to the sandbox by the agent's own
    delivery; then the purge, with a till selling throughout."""
    cloud = SandboxCloud(seed=6, engage_rate_per_second=UNLIMITED).serve()
    try:
        process = agent_process(delivered_config(cloud))
        process.start()
        started = time.perf_counter()
        fill_seconds = post_receipts(process.url, process.token, DELIVERED, "P6")
        till = Till(process.url, process.token)
        wait_delivered(cloud, till)
        delivered_seconds = time.perf_counter() - started
        till.close()
        item_bytes = mean_item_bytes(tmp_path / "data")
        yardstick = delete_seconds(tmp_path, DELIVERED, item_bytes)
        # The sales during the purge stay queued (the sandbox answers them 503), so the purge
        # takes exactly the 100,000 items delivered before it.
        cloud.faults.reject_ids(LIVE_IDS, status=503, message="held back during the purge")
        purge_seconds, report, samples = purge_under_intake(process)
        assert process.terminate() == 0
    finally:
        cloud.stop()
    assert report["delivered_deleted"] == DELIVERED, report
    latency = summary_ms(samples)
    rows = [
        row(f"fill: {DELIVERED:,} receipts over HTTP, 8 clients (s)", round(fill_seconds, 1), "-"),
        row("fill and delivery to the sandbox, until all acked (s)", round(delivered_seconds), "-"),
        row(
            f"purge {DELIVERED:,} delivered (s)",
            round(purge_seconds, 2),
            "<= 5",
            purge_seconds <= 5,
        ),
        row(
            f"yardstick: bare DELETE of {DELIVERED:,} rows of {item_bytes} B (s)",
            round(yardstick, 2),
            "-",
        ),
        row("purge / yardstick", round(purge_seconds / yardstick, 1), "-"),
        row("intake p99 during purge (ms)", latency["p99_ms"], "<= 50", latency["p99_ms"] <= 50),
        row("intake p50 during purge (ms)", latency["p50_ms"], "-"),
        row("receipts taken during purge", len(samples), "-"),
    ]
    write_results(
        "p6_purge",
        rows,
        {
            "intake_during_purge": latency,
            "purge_report": report,
            "item_bytes": item_bytes,
            "delivery": "on: Engage (the sales during the purge held back with 503)",
        },
        sized={"delivered items": (DELIVERED, 100_000)},
    )
