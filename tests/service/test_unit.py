"""The systemd unit: its settings, a comment above each, and systemd's own verdict on it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.connectors import KINDS
from agent.core import config
from installer import services
from tests.conftest import ROOT

UNIT = ROOT / "service" / "linux" / "till-agent.service"
BUILD = ROOT / "build"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian package: systemd)",
)


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_every_setting_has_a_comment_above_it():
    lines = UNIT.read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"line {number + 1} has no comment: {line}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("User", "till-agent"),
        ("StateDirectory", "till-agent"),
        ("ConfigurationDirectory", "till-agent"),
        ("LogsDirectory", "till-agent"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("LoadCredential", "pos-token:/etc/till-agent/credentials/pos-token"),
    ],
)
def test_unit_sets(key, value):
    assert value in settings()[key]


def test_stop_timeout_is_above_the_agents_own_worst_stop():
    stop = config.ApiSettings().stop_timeout_seconds
    workers = 2 + len(KINDS)  # the API, the scheduler, one worker per cloud
    assert int(settings()["TimeoutStopSec"][0]) > stop * workers
    assert int(settings()["WatchdogSec"][0]) >= 10


def _rendered(tmp_path: Path) -> Path:
    """The unit as the installer writes it, with its credentials drop-in beside it (verify
    reads a drop-in directory next to the unit file, so the drop-in is checked too)."""
    program = Path(sys.executable).parent / "till-agent"
    unit = tmp_path / services.UNIT_NAME
    unit.write_text(services.unit_text(program))
    dropin = tmp_path / f"{services.UNIT_NAME}.d" / "credentials.conf"
    dropin.parent.mkdir()
    dropin.write_text(services.credentials_dropin([Path("/etc/till-agent/credentials/k")]))
    return unit


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(_rendered(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on some problems (an unknown key, a bad value): any output is a failure.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_systemd_analyze
def test_verify_would_catch_a_typo(tmp_path):
    assert SYSTEMD_ANALYZE is not None
    unit = _rendered(tmp_path)
    unit.write_text(unit.read_text().replace("PrivateTmp=yes", "PrivateTemp=yes"))
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "PrivateTemp" in done.stdout + done.stderr


@needs_systemd_analyze
def test_unit_security_exposure_is_recorded_and_low(tmp_path, capsys):
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", str(_rendered(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    BUILD.mkdir(exist_ok=True)
    (BUILD / "systemd-security.txt").write_text(done.stdout)
    with capsys.disabled():
        sys.stdout.write(f"\nsystemd-analyze security: {match[1]} {match[2]} (build/)\n")
    assert float(match[1]) <= 2.0
