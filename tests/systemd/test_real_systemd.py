"""The installed unit under real systemd (PID 1 of a throw-away container): `make test-systemd`.

The real `till-install` installs the wheel into a venv made with the system's Python; the unit
as shipped must reach READY and answer, come back after `kill -9` with its queue, be killed and
restarted by the watchdog when frozen (short timers from a test-only drop-in), and stop cleanly
within TimeoutStopSec=. The sandboxing is checked from inside the running service.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from installer import services
from tests.ci import need
from tests.conftest import ROOT, make_receipt
from tests.systemd.container import Container, missing_tools

pytestmark = pytest.mark.systemd

UNIT = services.UNIT_NAME
VENV = "/opt/till-agent"
PY = f"{VENV}/bin/python"
TEST_TIMERS = f"/etc/systemd/system/{UNIT}.d/zz-test-timers.conf"
ANSWERS = """
store_id = "S042"
till_id = "T03"
environment = "test"
port = 8765

[destinations.hook]
kind = "webhook"
[destinations.hook.test]
# Nothing listens on port 9: what the till sends stays queued.
base_url = "http://127.0.0.1:9/hook"
signing_key = "not-a-real-key-0123456789abcdef"
"""


def _build_wheels(target: Path) -> None:
    """The project's wheel and its dependencies': the container has no network."""
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("till_agent-*.whl"):
        old.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(target), str(ROOT)],
        check=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    missing = missing_tools()
    need(not missing, "cannot boot systemd in a container here: " + ", ".join(missing))
    io = tmp_path_factory.mktemp("io")
    _build_wheels(ROOT / "build" / "systemd-wheels")
    shutil.copytree(ROOT / "build" / "systemd-wheels", io / "wheels")
    shutil.copy(Path(__file__).parent / "call.py", io / "call.py")
    (io / "answers.toml").write_text(ANSWERS)
    (io / "receipt.json").write_text(json.dumps(make_receipt("S042-T03-000123")))
    made = Container(tmp_path_factory.mktemp("container"), io)
    try:
        state = made.boot()
        assert state in ("running", "degraded"), made.boot_log()
        yield made
    finally:
        made.poweroff()


@pytest.fixture(scope="module")
def installed(container: Container) -> str:
    """The documented install: a venv from /usr/bin/python3, the wheel, `till-install install`.

    A log file left by an earlier run as root is planted first (the installer must hand it to
    the service). Returns what till-install printed."""
    today = dt.datetime.now(dt.UTC).date().isoformat()
    container.sh(
        # This machine's own leftovers would show through the overlay: start clean.
        "rm -rf /var/log/till-agent /var/lib/till-agent /etc/till-agent /opt/till-agent\n"
        f"mkdir -p /var/log/till-agent && echo '{{}}' > /var/log/till-agent/till-agent-{today}.log"
    )
    container.sh(
        f"/usr/bin/python3 -m venv {VENV}\n"
        f"{VENV}/bin/pip install --quiet --no-index --find-links /io/wheels till-agent"
    )
    done = container.run(
        f"{VENV}/bin/till-install", "install", "--non-interactive", "--answers",
        "/io/answers.toml", "--offline", check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr + _journal(container)
    return done.stdout


def _journal(container: Container) -> str:
    return container.run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat", check=False).stdout


def _prop(container: Container, name: str) -> str:
    return container.run("systemctl", "show", "-p", name, "--value", UNIT).stdout.strip()


def _call(container: Container, method: str, path: str, body: str = "") -> dict[str, Any]:
    done = container.run(PY, "/io/call.py", method, path, *([body] if body else []))
    return json.loads(done.stdout)


def _wait_for_new_main_pid(container: Container, old: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pid = _prop(container, "MainPID")
        if pid not in ("0", old) and _prop(container, "SubState") == "running":
            return pid
        time.sleep(0.2)
    raise AssertionError(f"no new main process within {seconds} s:\n{_journal(container)[-3000:]}")


def _kept(container: Container) -> dict[str, Any]:
    """The queued receipt, as the agent reports it."""
    answer = _call(container, "GET", "/v1/receipts/S042-T03-000123")
    assert answer["status"] == 200, answer
    return answer["body"]["destinations"][0]


def test_the_shipped_unit_reaches_ready_and_answers(container, installed):
    assert "POS token: in /etc/till-agent/credentials/pos-token" in installed
    shipped = (ROOT / "service" / "linux" / UNIT).read_text()
    on_disk = container.run("cat", f"/etc/systemd/system/{UNIT}").stdout
    assert on_disk == shipped  # /opt/till-agent/bin/till-agent: exactly the unit we ship
    assert _prop(container, "Type") == "notify"
    assert _prop(container, "SubState") == "running"  # Type=notify: only after READY=1
    assert _call(container, "GET", "/v1/health")["status"] == 200
    status = container.run(f"{VENV}/bin/till-agent", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Till T03 of store S042" in status.stdout
    verify = container.run(f"{VENV}/bin/till-install", "verify", "--offline", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "active: running" in verify.stdout


def test_the_agent_runs_sandboxed_and_cannot_touch_its_secrets(container, installed):
    pid = _prop(container, "MainPID")
    proc = container.run("cat", f"/proc/{pid}/status").stdout
    assert "NoNewPrivs:\t1" in proc
    assert "CapEff:\t0000000000000000" in proc
    uid, gid = container.run("stat", "-c", "%u %g", f"/proc/{pid}").stdout.split()
    assert uid != "0"
    # As the service itself: its user, its mount and user namespaces.
    probe = (
        "touch /etc/till-agent/credentials/probe 2>/dev/null && echo CREDENTIALS-WRITABLE; "
        "touch /etc/till-agent/config.toml 2>/dev/null && echo CONFIG-WRITABLE; "
        "cat /etc/till-agent/credentials/pos-token >/dev/null 2>&1 && echo SECRET-FILE-READABLE; "
        "ls /root >/dev/null 2>&1 && echo ROOT-VISIBLE; "
        "touch /usr/probe 2>/dev/null && echo USR-WRITABLE; "
        "cat /run/credentials/till-agent.service/pos-token >/dev/null && echo CREDENTIAL-READABLE"
    )
    done = container.run(
        "nsenter", "-t", pid, "-m", "-U", "--preserve-credentials", "-S", uid, "-G", gid,
        "--", "sh", "-c", probe, check=False,
    )  # fmt: skip
    assert done.stdout.split() == ["CREDENTIAL-READABLE"], done.stdout + done.stderr


def test_a_stale_log_file_is_handed_to_the_service_and_logging_works(container, installed):
    today = dt.datetime.now(dt.UTC).date().isoformat()
    owner = container.run("stat", "-c", "%U", f"/var/log/till-agent/till-agent-{today}.log")
    assert owner.stdout.strip() == services.SERVICE_USER
    deadline = time.monotonic() + 10
    log = ""
    while time.monotonic() < deadline and '"level"' not in log:
        log = container.run("cat", f"/var/log/till-agent/till-agent-{today}.log").stdout
        time.sleep(0.2)
    assert '"level"' in log  # the agent's own JSON lines after the planted '{}'
    assert "Logging error" not in _journal(container)


def test_kill_9_is_restarted_with_the_queue_kept(container, installed):
    assert _call(container, "POST", "/v1/receipts", "/io/receipt.json")["status"] in (200, 202)
    before = _kept(container)
    restarts = int(_prop(container, "NRestarts"))
    old = _prop(container, "MainPID")
    container.run("kill", "-9", old)
    # RestartSec=5 as shipped, then the start itself.
    _wait_for_new_main_pid(container, old, seconds=30)
    assert int(_prop(container, "NRestarts")) == restarts + 1
    after = _kept(container)
    assert after["state"] in ("queued", "retrying", "sending")
    assert after["revision"] == before["revision"]


def test_a_frozen_agent_is_restarted_by_the_watchdog(container, installed):
    # Short timers through a test-only drop-in; the shipped unit says WatchdogSec=30.
    container.sh(
        f"printf '[Service]\\nWatchdogSec=4\\nRestartSec=1\\n' > {TEST_TIMERS}\n"
        f"systemctl daemon-reload && systemctl restart {UNIT}"
    )
    try:
        pinging = _prop(container, "MainPID")
        time.sleep(9)  # over two WatchdogSec: the agent's own WATCHDOG=1 keep it alive
        assert _prop(container, "MainPID") == pinging
        container.run("kill", "-STOP", pinging)
        _wait_for_new_main_pid(container, pinging, seconds=30)
        assert "Watchdog timeout" in _journal(container)
        assert _kept(container)["state"] in ("queued", "retrying", "sending")
    finally:
        container.sh(f"rm -f {TEST_TIMERS} && systemctl daemon-reload && systemctl restart {UNIT}")


def test_systemctl_stop_is_clean_and_within_the_stop_timeout(container, installed):
    shipped = (ROOT / "service" / "linux" / UNIT).read_text()
    timeout = float(shipped.split("\nTimeoutStopSec=")[1].split()[0])
    assert _prop(container, "TimeoutStopUSec") == "1min 30s"  # what systemd took from it
    started = time.monotonic()
    container.run("systemctl", "stop", UNIT)
    took = time.monotonic() - started
    assert took < timeout
    assert took < 10, f"stop took {took:.1f} s"  # graceful, not the timeout's SIGKILL
    assert _prop(container, "ActiveState") == "inactive"
    assert _prop(container, "Result") == "success"
    assert _prop(container, "ExecMainStatus") == "0"
    time.sleep(2)
    assert _prop(container, "ActiveState") == "inactive"  # a clean stop stays stopped
    container.run("systemctl", "start", UNIT)
    assert _kept(container)["revision"] == 1  # the queue survives stop and start


def test_a_program_the_sandbox_hides_is_refused_before_anything_is_written(container, installed):
    container.sh(
        "/usr/bin/python3 -m venv /root/hidden\n"
        "/root/hidden/bin/pip install --quiet --no-index --find-links /io/wheels till-agent"
    )
    done = container.run(
        "/root/hidden/bin/till-install", "install", "--non-interactive", "--answers",
        "/io/answers.toml", "--offline", check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "the program is under /root" in done.stderr
    assert "/usr/bin/python3 -m venv /opt/till-agent" in done.stderr
    unit = container.run("cat", f"/etc/systemd/system/{UNIT}").stdout
    assert f"ExecStart={VENV}/bin/till-agent run" in unit  # the working install untouched
