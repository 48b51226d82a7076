"""P5: footprint — idle RSS and CPU, and time to healthy with 100,000 items queued by intake."""

from __future__ import annotations

import os
import time

import pytest

from agent.sandbox import SandboxCloud
from tests.conftest import AgentProcess, Till
from tests.perf.bench import (
    open_and_check_seconds,
    post_receipts,
    queued,
    seconds_to_healthy,
    write_results,
)

RECEIPTS = 50_000  # each queued for both destinations: 100,000 items
QUEUED = 2 * RECEIPTS
IDLE_SECONDS = 10.0


def proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds used, resident MB) of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss_mb = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return cpu, rss_mb


def outage_config(cloud: SandboxCloud) -> dict[str, object]:
    """Delivery on, both destinations at the sandbox (which refuses connections)."""
    return {
        "delivery": {"enabled": True},
        "destinations": {
            "engage": {"base_url": cloud.url},
            "loaded": {"base_url": cloud.url + "/loaded"},
        },
    }


def start_timed(process: AgentProcess) -> float:
    """Start the agent and return the seconds until its health answers 200."""
    started = time.monotonic()
    process.start(wait=False)
    return seconds_to_healthy(process.url, started)


def empty_start_seconds(directory, config: dict[str, object]) -> float:
    """Yardstick: the same agent, same config, started on an empty data directory."""
    directory.mkdir()
    process = AgentProcess(directory, config)
    try:
        return start_timed(process)
    finally:
        process.stop_quietly()


def row(figure: str, value: float, target: str, met: bool = True) -> dict[str, object]:
    return {"figure": figure, "value": value, "target": target, "met": met}


@pytest.mark.perf
@pytest.mark.timeout(1200)
def test_p5_footprint(agent_process, tmp_path):
    """Receipts posted through the API while the cloud refuses connections; then the agent is
    restarted on that store and left idle: the idle of a till in an outage."""
    cloud = SandboxCloud(seed=4).serve()
    try:
        cloud.faults.set_offline("refused")
        config = outage_config(cloud)
        process = agent_process(config)
        process.start()
        fill_seconds = post_receipts(process.url, process.token, RECEIPTS, "P5")
        till = Till(process.url, process.token)
        assert queued(till.get("/v1/status").json()) == QUEUED
        till.close()
        assert process.terminate() == 0
        outbox = tmp_path / "data" / "outbox.db"
        outbox_mb = outbox.stat().st_size / 1e6
        check_seconds = open_and_check_seconds(outbox)
        to_healthy = start_timed(process)
        cpu_before, _ = proc_stat(process.process.pid)
        time.sleep(IDLE_SECONDS)
        cpu_after, rss_mb = proc_stat(process.process.pid)
        till = Till(process.url, process.token)
        assert queued(till.get("/v1/status").json()) == QUEUED
        till.close()
        assert process.terminate() == 0
        empty_seconds = empty_start_seconds(tmp_path / "empty", config)
    finally:
        cloud.stop()
    idle_cpu = 100 * (cpu_after - cpu_before) / IDLE_SECONDS
    rows = [
        row(f"fill: {RECEIPTS:,} receipts over HTTP, 8 clients (s)", round(fill_seconds, 1), "-"),
        row("outbox.db after the fill (MB)", round(outbox_mb, 1), "-"),
        row(
            f"healthy after restart, {QUEUED:,} queued (s)",
            round(to_healthy, 2),
            "<= 2",
            to_healthy <= 2,
        ),
        row("yardstick: agent start, empty store (s)", round(empty_seconds, 2), "-"),
        row("yardstick: sqlite open + quick_check (s)", round(check_seconds, 3), "-"),
        row("idle RSS (MB)", round(rss_mb, 1), "<= 80", rss_mb <= 80),
        row("idle CPU (%)", round(idle_cpu, 2), "<= 1", idle_cpu <= 1),
    ]
    write_results(
        "p5_footprint",
        rows,
        {"idle_seconds": IDLE_SECONDS, "delivery": "on: the cloud refusing", "queued": QUEUED},
    )
