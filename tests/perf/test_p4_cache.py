"""P4: the contact cache at scale — apply rate, disk per contact, lookup latency over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, Till
from tests.perf.bench import summary_ms, write_results

COUNT = int(os.environ.get("BENCH_CONTACTS", "1000000"))
LOOKUPS = 2000


@pytest.mark.perf
def test_p4_contact_cache_at_scale(agent_process, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    applied = subprocess.run(
        [sys.executable, "-m", "tests.perf.apply_contacts", str(data_dir), str(COUNT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    apply = json.loads(applied.stdout)
    on_disk = sum(p.stat().st_size for p in data_dir.glob("contacts.db*"))
    process = agent_process()
    process.start()
    till = Till(process.url, process.token)
    samples = []
    for n in range(LOOKUPS):
        phone = f"070{(n * 7919) % COUNT:07d}"
        started = time.perf_counter()
        response = till.get("/v1/contacts/lookup", params={"mobilePhone": phone})
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    till.close()
    rss_mb = agent_rss_mb(process.process.pid)
    latency = summary_ms(samples)
    per_contact = on_disk / COUNT
    rows = [
        {
            "figure": f"apply {COUNT:,} contacts (contacts/s)",
            "value": round(apply["rate"]),
            "target": ">= 20000",
            "met": apply["rate"] >= 20000,
        },
        {
            "figure": "peak RSS while applying (MB)",
            "value": round(apply["peak_rss_mb"]),
            "target": "<= 150",
            "met": apply["peak_rss_mb"] <= 150,
        },
        {
            "figure": "bytes on disk per contact",
            "value": round(per_contact),
            "target": "<= 600",
            "met": per_contact <= 600,
        },
        {
            "figure": "lookup by phone over HTTP p99 (ms)",
            "value": latency["p99_ms"],
            "target": "<= 2",
            "met": latency["p99_ms"] <= 2,
        },
        {"figure": "lookup p50 (ms)", "value": latency["p50_ms"], "target": "-", "met": True},
        {
            "figure": "agent RSS with the cache (MB)",
            "value": round(rss_mb),
            "target": "-",
            "met": True,
        },
    ]
    write_results(
        "p4_cache",
        rows,
        {
            "contacts": COUNT,
            "feed": "generated in the benchmark (the sandbox feed is not wired yet)",
        },
    )
    assert process.terminate() == 0


def agent_rss_mb(pid: int) -> float:
    """The agent's peak resident memory (Linux)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0
