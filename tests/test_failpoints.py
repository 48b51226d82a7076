"""The crash points: parsed from TILL_AGENT_FAILPOINTS, inert unless named, fatal when due."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from agent.core import failpoints
from tests.conftest import ROOT


def test_the_spec_names_points_and_hit_counts():
    assert failpoints.parse("") == {}
    assert failpoints.parse("intake.after_commit@3, purge.after_delete") == {
        "intake.after_commit": 3,
        "purge.after_delete": 1,
    }


def test_an_unknown_point_is_refused():
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.parse("intake.after_comit")


def test_a_due_point_kills_the_process_and_an_unnamed_one_does_nothing():
    script = (
        "from agent.core.failpoints import failpoint\n"
        "failpoint('purge.after_delete')\n"
        "failpoint('intake.after_commit')\n"
        "print('passed the first hit', flush=True)\n"
        "failpoint('intake.after_commit')\n"
        "print('not reached', flush=True)\n"
    )
    env = {**os.environ, failpoints.ENV: "intake.after_commit@2"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.decode().splitlines() == ["passed the first hit"]


def test_the_no_fsync_hook_turns_durable_stores_off_only_when_named(tmp_path):
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.core import db\n"
        "conn = db.connect(Path(sys.argv[1]))\n"
        "print(conn.execute('PRAGMA synchronous').fetchone()[0], flush=True)\n"
    )

    def synchronous(spec: str) -> str:
        env = {**os.environ, failpoints.ENV: spec}
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"{spec or 'none'}.db")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=30,
            check=True,
        )
        return done.stdout.decode().strip()

    assert synchronous("") == "2"  # FULL, as on every till
    assert synchronous("intake.after_commit") == "2"  # a crash point is no hook
    assert synchronous("storage.no_fsync") == "0"  # OFF: the power-loss control only
    assert not failpoints.hooked("storage.no_fsync")  # this process: nothing named
