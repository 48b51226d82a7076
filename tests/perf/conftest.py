"""Around a benchmark run: what ran beside each benchmark, and one table of all of them at the
end (build/bench/summary.md); a missed target that names no next lever fails the run."""

from __future__ import annotations

import pytest

from tests.perf.bench import WRITTEN, start_benchmark, write_summary


@pytest.fixture(autouse=True)
def _note_what_runs_beside(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("perf") is not None:
        start_benchmark()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not WRITTEN:
        return
    path, problems = write_summary(list(WRITTEN))
    print(f"\n\nsummary of this run ({len(WRITTEN)} benchmarks): {path}")
    print(path.read_text(encoding="utf-8"))
    if any("names no lever" in problem for problem in problems):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
