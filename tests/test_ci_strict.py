"""tests/ci.py: under CI=true a skip fails, bar a test that runs elsewhere; every skip is logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SAMPLE = """
import pytest
from tests.ci import ELSEWHERE, need

def test_has_its_tool():
    need(True, "never shown")

def test_lacks_its_tool():
    need(False, "frobnicator is not installed (Debian: frob)")

@pytest.mark.skipif(True, reason="wixl not installed")
def test_marked():
    pass

@pytest.mark.skipif(True, reason=ELSEWHERE + "make test-windows")
def test_for_windows():
    pass

@pytest.mark.xfail(strict=True, reason="a known gap")
def test_known_gap():
    raise AssertionError
"""


def run(tmp_path: Path, ci: str) -> tuple[str, str]:
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    log = tmp_path / f"skips-{ci or 'local'}.txt"
    env = {**os.environ, "CI": ci, "TILL_SKIP_LOG": str(log), "PYTHONPATH": str(ROOT)}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only tests.ci, not schemathesis's plugin
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rA",
        "-p",
        "tests.ci",
        "-p",
        "no:cacheprovider",
    ]
    done = subprocess.run(
        [*command, "-c", os.devnull, "--rootdir", str(tmp_path), str(sample)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    return done.stdout, log.read_text() if log.exists() else ""


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_missing_tool_fails_the_run_and_is_listed(tmp_path, ci):
    out, log = run(tmp_path, ci)
    # A skip at setup (a skipif mark) fails as an error of the setup: a failure all the same.
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in out, out
    assert "FAILED test_sample.py::test_lacks_its_tool" in out
    assert "CI=true allows no skip: frobnicator is not installed" in out
    assert "ERROR test_sample.py::test_marked" in out
    assert "FAILED (skip under CI=true)  test_sample.py::test_lacks_its_tool" in log
    assert "SKIPPED  test_sample.py::test_for_windows  —  runs elsewhere: make test-windows" in log


def test_outside_ci_a_missing_tool_skips_and_says_why(tmp_path):
    out, log = run(tmp_path, "")
    assert "1 passed, 3 skipped, 1 xfailed" in out, out
    assert "frobnicator is not installed (Debian: frob)" in out
    assert log.count("SKIPPED") == 3
