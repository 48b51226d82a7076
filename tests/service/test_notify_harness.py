"""The real agent in a subprocess under a harness that speaks systemd's notify protocol."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, base_config, free_port, write_toml
from tests.service.listener import NotifyListener

# What a service wrapper does: SIGTERM sets the stop event, agent.app.run does the rest.
DRIVER = """
import pathlib, signal, sys, threading
from agent import app
from agent.core import config
from agent.connectors import KINDS
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
app.run(config.load(pathlib.Path(sys.argv[1]), config.environment(), KINDS), stop)
"""
STOP_TIMEOUT_SECONDS = 3.0


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    made = NotifyListener()
    yield made
    made.close()


def _config(tmp_path: Path) -> tuple[Path, str]:
    port = free_port()
    raw = base_config(tmp_path, port)
    raw["api"]["stop_timeout_seconds"] = STOP_TIMEOUT_SECONDS
    return write_toml(tmp_path / "config.toml", raw), f"http://127.0.0.1:{port}"


def _start(command: list[str], listener: NotifyListener, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": "200000",  # a ping every 0.1 s
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WATCHDOG_PID", None)
    with (tmp_path / "agent.log").open("ab") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)


def _stop(process: subprocess.Popen[bytes], listener: NotifyListener) -> float:
    """SIGTERM; STOPPING=1 must arrive and the process end in the stop timeout. Seconds taken."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    listener.wait_for("STOPPING=1", timeout_seconds=STOP_TIMEOUT_SECONDS + 5)
    assert process.wait(STOP_TIMEOUT_SECONDS + 5) == 0
    return time.monotonic() - started


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/v1/health", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_agent_run_says_ready_pings_and_says_stopping(listener, tmp_path):
    config_path, url = _config(tmp_path)
    process = _start([sys.executable, "-c", DRIVER, str(config_path)], listener, tmp_path)
    try:
        received = listener.wait_for("READY=1")
        assert _healthy(url), "READY=1 came before the API answered"
        assert any(m.startswith("READY=1\nSTATUS=serving on http://127.0.0.1:") for m in received)
        listener.wait_for("WATCHDOG=1", timeout_seconds=5)
        listener.wait_for("WATCHDOG=1", timeout_seconds=5)
        assert _stop(process, listener) < STOP_TIMEOUT_SECONDS + 2
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_till_agent_run_speaks_the_notify_protocol(listener, tmp_path):
    config_path, url = _config(tmp_path)
    command = [sys.executable, "-m", "agent", "run", "--config", str(config_path)]
    process = _start(command, listener, tmp_path)
    try:
        deadline = time.monotonic() + 15
        while not _healthy(url) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        listener.wait_for("READY=1")
        listener.wait_for("WATCHDOG=1", timeout_seconds=5)
        _stop(process, listener)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
