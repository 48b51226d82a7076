"""P5: footprint — idle RSS and CPU, and time to healthy with 100,000 items queued."""

from __future__ import annotations

import os
import time

import pytest
import requests

from agent import crypto
from agent.outbox import Outbox
from agent.sandbox import SandboxCloud
from tests.conftest import make_receipt
from tests.perf.bench import write_results

QUEUED = 100_000
IDLE_SECONDS = 10.0


def prefill_queued(data_dir) -> None:
    crypto.load_or_create(data_dir / "keyring.json", may_create=True)
    box = Outbox(data_dir, ["engage", "loaded"])
    item = {"kind": "receipt", "key": "", "revision": 1, "body": make_receipt(), "personal": None}
    for start in range(0, QUEUED, 5000):

        def fill(batch, s=start):
            for n in range(s, s + 5000):
                batch.put("loaded", {**item, "key": f"R-{n}"})

        box.run(fill)
    box.close()


def proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds used, resident MB) of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss_mb = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return cpu, rss_mb


@pytest.mark.perf
def test_p5_footprint(agent_process, tmp_path):
    """Delivery on, the cloud refusing connections: the idle of a till in an outage."""
    (tmp_path / "data").mkdir()
    prefill_queued(tmp_path / "data")
    cloud = SandboxCloud(seed=4).serve()
    cloud.faults.set_offline("refused")
    process = agent_process(
        {
            "delivery": {"enabled": True},
            "destinations": {
                "engage": {"base_url": cloud.url},
                "loaded": {"base_url": cloud.url + "/loaded"},
            },
        }
    )
    started = time.monotonic()
    process.start(wait=False)
    while True:
        try:
            if requests.get(process.url + "/v1/health", timeout=0.2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.01)
    to_healthy = time.monotonic() - started
    cpu_before, _ = proc_stat(process.process.pid)
    time.sleep(IDLE_SECONDS)
    cpu_after, rss_mb = proc_stat(process.process.pid)
    idle_cpu = 100 * (cpu_after - cpu_before) / IDLE_SECONDS
    rows = [
        {
            "figure": f"healthy after start, {QUEUED:,} queued (s)",
            "value": round(to_healthy, 2),
            "target": "<= 2",
            "met": to_healthy <= 2,
        },
        {
            "figure": "idle RSS (MB)",
            "value": round(rss_mb, 1),
            "target": "<= 80",
            "met": rss_mb <= 80,
        },
        {
            "figure": "idle CPU (%)",
            "value": round(idle_cpu, 2),
            "target": "<= 1",
            "met": idle_cpu <= 1,
        },
    ]
    write_results(
        "p5_footprint", rows, {"idle_seconds": IDLE_SECONDS, "delivery": "on, cloud refusing"}
    )
    assert process.terminate() == 0
    cloud.stop()
