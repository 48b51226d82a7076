"""The installed unit run by a systemd stand-in: READY, pings, a crash restarted, the queue kept."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from installer import steps
from tests.conftest import make_receipt
from tests.installer.fakes import FakeHost
from tests.service.listener import NotifyListener
from tests.service.supervisor import Directories, Supervisor, read_unit

pytestmark = pytest.mark.linux_only("the systemd unit under a systemd stand-in")


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    made = NotifyListener()
    yield made
    made.close()


@pytest.fixture
def supervisor(root: Path, host: FakeHost, installed, listener) -> Iterator[Supervisor]:
    """The unit as installed; the agent's paths come from systemd's variables, as on a till."""
    host.stop()  # the fake's in-process agent: from here on the unit runs it
    layout = steps.layout(root)
    made = Supervisor(
        unit=read_unit(layout.unit_dir / "till-agent.service"),
        dirs=Directories(
            configuration=layout.config_dir,
            state=layout.data_dir,
            logs=layout.log_dir,
            credentials=root / "run" / "credentials" / "till-agent.service",
        ),
        root=root,
        listener=listener,
        watchdog_seconds=1.0,
        restart_seconds=0.2,
    )
    yield made
    if made.process is not None and made.process.poll() is None:
        made.process.kill()
        made.process.wait(10)


def _session(supervisor: Supervisor) -> tuple[requests.Session, str]:
    token = (supervisor.dirs.credentials / "pos-token").read_text().strip()
    listen = re.search(
        r'listen = "([^"]+)"', supervisor.dirs.configuration.joinpath("config.toml").read_text()
    )
    assert listen is not None
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session, f"http://{listen.group(1)}"


def _waiting(session: requests.Session, url: str) -> dict[str, int]:
    answer = session.get(url + "/v1/status", timeout=5).json()
    return {d["name"]: d["depth"] + d["inFlight"] + d["setAside"] for d in answer["destinations"]}


def test_the_installed_unit_runs_the_agent_and_brings_it_back_after_a_crash(supervisor):
    received = supervisor.start()
    assert any(m.startswith("READY=1") for m in received)
    session, url = _session(supervisor)
    assert session.get(url + "/v1/health", timeout=5).status_code == 200
    for n in range(3):
        receipt = make_receipt(f"R-{n}")
        assert session.post(url + "/v1/receipts", json=receipt, timeout=5).status_code == 202
    supervisor.listener.wait_for("WATCHDOG=1", timeout_seconds=3)

    assert supervisor.process is not None
    supervisor.process.send_signal(signal.SIGKILL)
    assert supervisor.restart_if_failed()  # Restart=on-failure: a kill is a failure
    assert supervisor.starts == 2
    assert _waiting(session, url) == {"engage": 3, "loaded": 3}  # nothing lost in the crash
    pings = _count_pings(supervisor.listener, seconds=2.0)
    assert pings >= 2  # every half WatchdogSec

    code, took = supervisor.stop()  # systemctl stop
    assert code == 0
    assert took < supervisor.seconds("TimeoutStopSec")
    assert not supervisor.restart_if_failed()  # a clean stop stays stopped
    session.close()


def _count_pings(listener: NotifyListener, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    pings = 0
    while (left := deadline - time.monotonic()) > 0:
        message = listener.receive(left)
        pings += message == "WATCHDOG=1"
    return pings
