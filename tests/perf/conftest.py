"""After a benchmark run: one summary table of every benchmark that ran (build/bench/)."""

from __future__ import annotations

import pytest

from tests.perf.bench import WRITTEN, write_summary


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not WRITTEN:
        return
    path = write_summary(list(WRITTEN))
    print(f"\n\nsummary of this run ({len(WRITTEN)} benchmarks): {path}")
    print(path.read_text(encoding="utf-8"))
