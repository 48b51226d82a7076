"""Strict mode for CI: under CI=true a test that would skip fails instead, and skips are listed.

`make test` installs the tools the suite needs where it can (root with apt-get). A test whose
tool is missing skips with the reason on a developer's machine; under `CI=true` the same skip is
a failure, because CI must prove what the suite claims. A skip whose reason starts with
`ELSEWHERE` is a test that runs in another target (the Windows tests under `make
test-windows`), never a missing tool, and stays a skip. Every skip, and every skip turned into a
failure, is appended to the file named by `TILL_SKIP_LOG`, which `.ci/run` prints at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}
ELSEWHERE = "runs elsewhere: "


def need(available: object, reason: str) -> None:
    """Skip the running test unless available is truthy; reason says what is missing and how to
    get it. Under CI=true the skip becomes a failure (see the module docstring)."""
    if not available:
        pytest.skip(reason)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _log(line: str) -> None:
    target = os.environ.get("TILL_SKIP_LOG")
    if target:
        with Path(target).open("a", encoding="utf-8") as log:
            log.write(line + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if IN_CI and not reason.startswith(ELSEWHERE):
        report.outcome = "failed"
        report.longrepr = f"would have skipped, and CI=true allows no skip: {reason}"
        _log(f"FAILED (skip under CI=true)  {item.nodeid}  —  {reason}")
    else:
        _log(f"SKIPPED  {item.nodeid}  —  {reason}")
