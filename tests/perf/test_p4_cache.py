"""P4: the contact cache at scale, synced over HTTP from the sandbox's Lightspeed feed.

The sandbox runs in its own process (`till-agent sandbox --lightspeed-customers N`), so its
CPU is not the agent's; the agent is a real `till-agent run` whose sync is started with
`POST /v1/contacts/sync`. BENCH_CONTACTS sets N (default 1,000,000; 50,000 is a quick run).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.sandbox import datagen
from tests.conftest import ROOT, Till, free_port
from tests.perf.bench import cpu_seconds, summary_ms, write_results

COUNT = int(os.environ.get("BENCH_CONTACTS", "1000000"))
LOOKUPS = 5000
ROUNDS = 5
SYNC_TIMEOUT_SECONDS = 1500
UNLIMITED = 10**9


def start_sandbox(
    tmp_path: Path, count: int, limit: tuple[int, float] = (UNLIMITED, 300.0)
) -> tuple[subprocess.Popen[bytes], str, float]:
    """The sandbox cloud in a child process with count customers and Lightspeed's rate limit
    (requests, window seconds); its URL and seeding time."""
    port = free_port()
    started = time.perf_counter()
    with (tmp_path / "sandbox.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "sandbox",
                "--port",
                str(port),
                "--lightspeed-customers",
                str(count),
                "--lightspeed-rate-limit",
                str(limit[0]),
                "--lightspeed-rate-window",
                str(limit[1]),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "sandbox.log").read_text()
        try:
            state = requests.get(f"{url}/_sandbox/state", timeout=1).json()
            assert state["lightspeed"]["customers"] == count
            return process, url, time.perf_counter() - started
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("the sandbox did not come up")


def status_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in KiB (Linux): VmHWM is the peak resident set."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


@pytest.mark.perf
@pytest.mark.timeout(SYNC_TIMEOUT_SECONDS + 600)
def test_p4_contact_cache_at_scale(agent_process, tmp_path):
    sandbox, cloud_url, seed_seconds = start_sandbox(tmp_path, COUNT)
    try:
        figures = sync_and_look_up(agent_process, tmp_path, cloud_url, sandbox.pid)
    finally:
        sandbox.terminate()
        sandbox.wait(30)
    figures["seed_seconds"] = round(seed_seconds, 1)
    report(figures)


def sync_and_look_up(agent_process: Any, tmp_path: Path, cloud_url: str, sandbox_pid: int):
    process = agent_process(
        {
            "contacts": {"source": "lightspeed"},
            "delivery": {"enabled": True},  # as a till runs (nothing is queued to send)
            # The sandbox is unlimited here, and so is the agent's budget for it (P7 measures
            # the download under Lightspeed's window).
            "destinations": {
                "lightspeed": {
                    "kind": "lightspeed",
                    "base_url": cloud_url,
                    "requests_per_second": UNLIMITED,
                    "rate_window_seconds": 1,
                }
            },
        }
    )
    process.start()
    assert process.process is not None
    pid = process.process.pid
    till = Till(process.url, process.token)
    agent_cpu, cloud_cpu = cpu_seconds(pid), cpu_seconds(sandbox_pid)
    started = time.perf_counter()
    answer = till.session.post(f"{process.url}/v1/contacts/sync", timeout=SYNC_TIMEOUT_SECONDS)
    wall = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    sync = answer.json()
    assert sync["changes"] == COUNT
    figures: dict[str, Any] = {
        "sync": sync,
        "wall_seconds": wall,
        "agent_cpu_seconds": cpu_seconds(pid) - agent_cpu,
        "sandbox_cpu_seconds": cpu_seconds(sandbox_pid) - cloud_cpu,
        "peak_rss_mb_after_sync": status_kib(pid, "VmHWM") / 1024,
        "sandbox_peak_rss_mb": status_kib(sandbox_pid, "VmHWM") / 1024,
    }
    data_dir = Path(process.raw["agent"]["data_dir"])
    files = {p.name: p.stat().st_size for p in data_dir.glob("contacts.db*")}
    figures["disk_bytes"] = files
    figures.update(latencies(till))
    figures["peak_rss_mb"] = status_kib(pid, "VmHWM") / 1024
    till.close()
    assert process.terminate() == 0
    return figures


def round_trips(till: Till, count: int) -> list[float]:
    """The yardstick: keep-alive GET /v1/health round trips through the same waitress."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        till.get("/v1/health")
        samples.append(time.perf_counter() - started)
    return samples


def look_up(till: Till, count: int, draw: random.Random) -> list[float]:
    """Lookups by phone (national format) of random synced customers, over HTTP."""
    samples = []
    for _ in range(count):
        phone = "0" + datagen.phone_for(draw.randrange(COUNT))[3:]  # +46700... as 0700...
        started = time.perf_counter()
        response = till.get("/v1/contacts/lookup", params={"mobilePhone": phone})
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        assert response.json()["source"] == "cache"
    return samples


def latencies(till: Till) -> dict[str, dict[str, float]]:
    """ROUNDS rounds of lookups, each beside a round of the yardstick (the same noise); p99 is
    given over all samples and as the median of the rounds' p99s (TARGETS: quote medians)."""
    draw = random.Random(4)
    lookups: list[list[float]] = []
    health: list[list[float]] = []
    for _ in range(ROUNDS):
        health.append(round_trips(till, LOOKUPS // ROUNDS))
        lookups.append(look_up(till, LOOKUPS // ROUNDS, draw))
    return {"lookup": over_rounds(lookups), "yardstick": over_rounds(health)}


def over_rounds(rounds: list[list[float]]) -> dict[str, float]:
    overall = summary_ms([s for samples in rounds for s in samples])
    p99s = sorted(summary_ms(samples)["p99_ms"] for samples in rounds)
    return {**overall, "median_round_p99_ms": p99s[len(p99s) // 2]}


def report(figures: dict[str, Any]) -> None:
    sync = figures["sync"]
    end_to_end = COUNT / figures["wall_seconds"]
    apply_rate = COUNT / sync["apply_seconds"]
    per_contact = sum(figures["disk_bytes"].values()) / COUNT
    latency, yardstick = figures["lookup"], figures["yardstick"]
    median_p99 = latency["median_round_p99_ms"]
    rows = [
        row("local apply rate (contacts/s, excl. fetch)", round(apply_rate), ">= 20000"),
        row("end-to-end sync rate over HTTP (contacts/s)", round(end_to_end), "-"),
        row("peak RSS of the agent (MB)", round(figures["peak_rss_mb"]), "<= 150"),
        row("bytes on disk per contact (db+wal+shm)", round(per_contact), "<= 600"),
        # The target is judged on every sample (issue 21: no figure that flatters); the
        # median of the rounds' p99s is shown beside it, as TARGETS.md quotes medians.
        row("lookup by phone over HTTP p99, all samples (ms)", latency["p99_ms"], "<= 2"),
        row("lookup p99, median of 5 rounds (ms)", median_p99, "-"),
        row("lookup p50 (ms)", latency["p50_ms"], "-"),
        row("yardstick: GET /v1/health p50 (ms)", yardstick["p50_ms"], "-"),
        row("yardstick: p99, median of 5 rounds (ms)", yardstick["median_round_p99_ms"], "-"),
        row("yardstick: p99 over all samples (ms)", yardstick["p99_ms"], "-"),
        row("sync wall time (s)", round(figures["wall_seconds"], 1), "-"),
        row("  of which fetching pages (s)", round(sync["fetch_seconds"], 1), "-"),
        row("  of which applying them (s)", round(sync["apply_seconds"], 1), "-"),
        row("agent CPU during the sync (s)", round(figures["agent_cpu_seconds"], 1), "-"),
        row("sandbox CPU during the sync (s)", round(figures["sandbox_cpu_seconds"], 1), "-"),
        row("sandbox start with the customers seeded (s)", figures["seed_seconds"], "-"),
    ]
    write_results(
        "p4_cache",
        rows,
        {
            "contacts": COUNT,
            "feed": "sandbox Lightspeed version-cursor feed over HTTP, sandbox in its own process",
            "figures": figures,
            "delivery": "on (nothing queued to send)",
        },
        sized={"contacts": (COUNT, 1_000_000)},
    )
    # Like the other benchmarks: a missed target is a "NO" in the table and the JSON, not a
    # failed test (the machines are shared and noisy; see docs/performance.md).


def row(figure: str, value: float, target: str) -> dict[str, Any]:
    """One result row; met is judged from the target text (">= x", "<= x", "-")."""
    met = True
    if target.startswith(">="):
        met = value >= float(target[2:])
    elif target.startswith("<="):
        met = value <= float(target[2:])
    return {"figure": figure, "value": value, "target": target, "met": met}
