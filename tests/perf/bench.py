"""Benchmark helpers: the fsync'd-insert yardstick, percentiles, and the results file and table."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

RESULTS_DIR = ROOT / "build" / "bench"
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


def write_results(name: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
    """build/bench/<name>.json and a table on stdout: figure, value, target, met."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {"benchmark": name, "machine": machine(), "results": rows, **extra}
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    WRITTEN.append(path)
    print(f"\n{name}: {machine()['platform']}, {machine()['cpus']} CPUs")
    print(f"{'figure':<44}{'value':>14}  {'target':<22}{'met':>5}")
    for row in rows:
        met = "yes" if row["met"] else "NO"
        print(f"{row['figure']:<44}{row['value']:>14}  {row['target']:<22}{met:>5}")
    print(f"results: {path}")
    return path


def write_summary(paths: list[Path]) -> Path:
    """build/bench/summary.json and summary.md: every benchmark of this run in one table."""
    documents = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    rows = [{"benchmark": d["benchmark"], **row} for d in documents for row in d["results"]]
    summary = {"machine": machine(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    lines = ["| benchmark | figure | value | target | met |", "|---|---|---|---|---|"]
    for row in rows:
        met = "yes" if row["met"] else "**no**"
        lines.append(
            f"| {row['benchmark']} | {row['figure']} | {row['value']} | {row['target']} | {met} |"
        )
    path = RESULTS_DIR / "summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
