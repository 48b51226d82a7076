"""Benchmark helpers: the fsync'd-insert yardstick, percentiles, and the results file and table."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ROOT, Till, make_receipt
from tests.perf.levers import LEVERS
from tests.perf.summary import render

RESULTS_DIR = ROOT / "build" / "bench"
_LINUX = sys.platform == "linux"
WRITTEN: list[Path] = []  # the results files of this run, for the summary (conftest.py)


def fsync_insert_rate(directory: Path, rows: int = 2000, payload_bytes: int = 2048) -> float:
    """Raw durable inserts per second: WAL, synchronous=FULL, one commit per row."""
    path = directory / "yardstick.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
    blob = os.urandom(payload_bytes)
    started = time.perf_counter()
    for _ in range(rows):
        conn.execute("INSERT INTO t (data) VALUES (?)", (blob,))
    elapsed = time.perf_counter() - started
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rows / elapsed


def delete_seconds(directory: Path, rows: int, payload_bytes: int) -> float:
    """A bare SQLite DELETE of `rows` rows of `payload_bytes` each (WAL, synchronous=FULL, one
    commit): the yardstick of P6's purge, on the same file system in the same run."""
    path = directory / "delete-yardstick.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, status INTEGER, data BLOB)")
    blob = os.urandom(payload_bytes)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t (status, data) VALUES (5, ?)", ((blob,) for _ in range(rows)))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    started = time.perf_counter()
    deleted = conn.execute("DELETE FROM t WHERE status = 5").rowcount
    elapsed = time.perf_counter() - started
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert deleted == rows
    return elapsed


def open_and_check_seconds(path: Path) -> float:
    """A bare SQLite open of `path` and a `quick_check` of it: the floor of an agent's start
    on that file (P5's yardstick)."""
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
    elapsed = time.perf_counter() - started
    conn.close()
    assert verdict == "ok", verdict
    return elapsed


def post_receipts(url: str, token: str, count: int, prefix: str, clients: int = 8) -> float:
    """Receipts `prefix`-000000 … through `POST /v1/receipts`, as tills hand them over: `clients`
    threads, each a keep-alive session. Every answer must be 202. Returns the wall time."""
    failures: list[str] = []

    def client(first: int) -> None:
        till = Till(url, token)
        try:
            for n in range(first, count, clients):
                answer = till.post("/v1/receipts", make_receipt(f"{prefix}-{n:06d}"))
                if answer.status_code != 202:
                    failures.append(f"{n}: {answer.status_code} {answer.text[:200]}")
                    return
        finally:
            till.close()

    threads = [threading.Thread(target=client, args=(first,)) for first in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert not failures, failures[:3]
    return elapsed


def seconds_to_healthy(url: str, started: float, timeout_seconds: float = 60.0) -> float:
    """Seconds from `started` (time.monotonic) until `GET /v1/health` answers 200."""
    while time.monotonic() - started < timeout_seconds:
        try:
            if requests.get(url + "/v1/health", timeout=0.2).status_code == 200:
                return time.monotonic() - started
        except requests.ConnectionError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"not healthy in {timeout_seconds} s")


def queued(status: dict[str, Any]) -> int:
    """Items waiting or in flight, over every destination of a `GET /v1/status` answer."""
    return sum(d["depth"] + d["inFlight"] for d in status["destinations"])


def wait_drained(till: Till, timeout_seconds: float = 600) -> float:
    """Seconds until no item waits or is in flight at any destination."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        if queued(till.get("/v1/status").json()) == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not drained in {timeout_seconds} s")


def bytes_written(pid: int) -> int:
    """What the process has caused to be written to storage (Linux /proc/PID/io write_bytes)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/PID/io")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far (Linux /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """What a process spent, CPU and storage writes, since the meter started."""

    def __init__(self, pid: int, *, since_start: bool = False) -> None:
        """since_start: count everything since the process began, not since now."""
        self.pid = pid
        self.cpu, self.written = (0.0, 0) if since_start else (cpu_seconds(pid), bytes_written(pid))

    def per_receipt(self, receipts: int) -> tuple[float, float]:
        """(CPU ms, KiB written) per receipt since the start."""
        cpu = (cpu_seconds(self.pid) - self.cpu) * 1000 / receipts
        return round(cpu, 3), round((bytes_written(self.pid) - self.written) / 1024 / receipts, 1)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary_ms(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 3),
        "max_ms": round(max(samples) * 1000, 3),
    }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    extra: dict[str, Any],
    *,
    sized: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """build/bench/<name>.json and a table on stdout: figure, value, target, met.

    extra["delivery"] says whether delivery ran (the one table shows it); sized: what a
    BENCH_* variable made smaller than TARGETS.md's run, as {what: (used, full size)}.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {
        "benchmark": name,
        "machine": machine(),
        "results": rows,
        "beside": beside(),
        "sized_down": [
            f"{what} {used:,} of {full:,}"
            for what, (used, full) in (sized or {}).items()
            if used != full
        ],
        **extra,
    }
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    WRITTEN.append(path)
    print(f"\n{name}: {machine()['platform']}, {machine()['cpus']} CPUs")
    print(f"{'figure':<44}{'value':>14}  {'target':<22}{'met':>5}")
    for row in rows:
        met = "yes" if row["met"] else "NO"
        print(f"{row['figure']:<44}{row['value']:>14}  {row['target']:<22}{met:>5}")
    print(f"results: {path}")
    return path


def write_summary(paths: list[Path]) -> tuple[Path, list[str]]:
    """build/bench/summary.json and summary.md: P1-P8 of this run in one table; and what is
    wrong with the run (a miss naming no lever, a benchmark that did not run)."""
    documents = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    at = f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit()}"
    text, problems = render(documents, machine(), LEVERS, at)
    summary = {"machine": machine(), "at": at, "benchmarks": documents, "problems": problems}
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    path = RESULTS_DIR / "summary.md"
    path.write_text(text, encoding="utf-8")
    return path, problems


def commit() -> str:
    """The checkout's commit, with a + when it has changes not committed."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return run.stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain") else "")


# -- what ran beside a benchmark ---------------------------------------------------------------

_STARTED: dict[str, Any] = {}


def processes() -> dict[int, tuple[str, int, float]]:
    """Every process now: pid -> (its executable's name, its parent, CPU seconds so far)."""
    seen = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        seen[int(entry.name)] = (name, int(fields[1]), cpu)
    return seen


def ours(now: dict[int, tuple[str, int, float]]) -> set[int]:
    """This process and everything it started (the agent, the sandbox): not "beside"."""
    mine, grew = {os.getpid()}, True
    while grew:
        children = {pid for pid, (_, parent, _) in now.items() if parent in mine} - mine
        mine |= children
        grew = bool(children)
    return mine


def start_benchmark() -> None:
    """Note the time, the load and every process's CPU as a benchmark starts (conftest.py)."""
    _STARTED.update(at=time.monotonic(), load=os.getloadavg()[0], cpu=processes() if _LINUX else {})


def beside() -> dict[str, Any]:
    """What else used the machine since start_benchmark(): the load average at both ends and
    the CPU of the other processes alive at both ends (names only, never command lines)."""
    if not _STARTED:
        return {}
    seconds = time.monotonic() - _STARTED["at"]
    now = processes() if _LINUX else {}
    mine, before = ours(now), _STARTED["cpu"]
    used: dict[str, float] = {}
    for pid, (name, _, cpu) in now.items():
        if pid not in mine and pid in before and before[pid][0] == name:
            used[name] = used.get(name, 0.0) + cpu - before[pid][2]
    busiest = sorted(used.items(), key=lambda item: -item[1])[:3]
    return {
        "seconds": round(seconds),
        "load_average": [round(_STARTED["load"], 2), round(os.getloadavg()[0], 2)],
        "others_cores": round(sum(used.values()) / max(seconds, 1e-9), 2),
        "others": [{"name": n, "cpu_seconds": round(s, 1)} for n, s in busiest if s >= 0.1],
    }
