"""P2: the till's view — the agent on loopback against calling the cloud directly (150 ms away),
with the agent's delivery on (as a till runs it: both destinations sending to that cloud) and
off (intake alone)."""

from __future__ import annotations

import contextlib
import time

import pytest
import requests

from agent.sandbox import SandboxCloud
from tests.conftest import Till, make_receipt
from tests.perf.bench import summary_ms, write_results

COUNT = 300
LATENCY = 0.150


def direct_engage(cloud: SandboxCloud, receipt: dict[str, object]) -> requests.Response:
    """What a POS without the agent does: post the receipt to Engage itself, and wait."""
    return requests.post(
        cloud.url + "/api/v2/receipts",
        json=receipt,
        headers={"apikey": "sandbox-engage-key", "User-Agent": "BenchPOS/1.0"},
        timeout=10,
    )


@pytest.mark.perf
@pytest.mark.parametrize("delivery", ["on", "off"])
def test_p2_intake_against_a_direct_cloud_call(agent_process, delivery):
    cloud = SandboxCloud(seed=2).serve()
    try:
        cloud.faults.set_latency(LATENCY)
        process = agent_process(
            {
                "delivery": {"enabled": delivery == "on"},
                "destinations": {
                    "engage": {"base_url": cloud.url},
                    "loaded": {"base_url": cloud.url + "/loaded"},
                },
            }
        )
        process.start()
        till = Till(process.url, process.token)
        agent_times, direct_times = [], []
        for n in range(COUNT):
            receipt = make_receipt(f"P2-{n:05d}")
            started = time.perf_counter()
            assert till.post("/v1/receipts", receipt).status_code == 202
            agent_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            direct_engage(cloud, make_receipt(f"P2D-{n:05d}"))
            direct_times.append(time.perf_counter() - started)
        cloud.faults.set_offline("refused")
        accepted = sum(
            till.post("/v1/receipts", make_receipt(f"P2-OFF-{n}")).status_code == 202
            for n in range(100)
        )
        direct_ok = 0
        for n in range(20):
            with contextlib.suppress(requests.ConnectionError):
                direct_ok += direct_engage(cloud, make_receipt(f"P2D-OFF-{n}")).ok
        till.close()
        assert process.terminate() == 0
    finally:
        cloud.stop()
    agent_ms, direct_ms = summary_ms(agent_times), summary_ms(direct_times)
    ratio = direct_ms["p99_ms"] / agent_ms["p99_ms"]
    rows = [
        {
            "figure": "yardstick: direct call p99 (ms)",
            "value": direct_ms["p99_ms"],
            "target": "-",
            "met": True,
        },
        {
            "figure": "intake through the agent p99 (ms)",
            "value": agent_ms["p99_ms"],
            "target": "-",
            "met": True,
        },
        {
            "figure": "direct p99 / agent p99",
            "value": round(ratio, 1),
            "target": ">= 20",
            "met": ratio >= 20,
        },
        {
            "figure": "cloud down: accepted by the agent (%)",
            "value": accepted,
            "target": "100",
            "met": accepted == 100,
        },
        {
            "figure": "cloud down: accepted calling directly (%)",
            "value": direct_ok * 5,
            "target": "0",
            "met": direct_ok == 0,
        },
    ]
    write_results(
        "p2_vs_direct" if delivery == "on" else "p2_vs_direct_delivery_off",
        rows,
        {
            "latency_seconds": LATENCY,
            "agent": agent_ms,
            "direct": direct_ms,
            "delivery": "on: Engage and Loaded, 150 ms away" if delivery == "on" else "off",
        },
    )
