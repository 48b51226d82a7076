"""The till-agent command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, base_config, make_receipt, merged, write_toml


def till_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_run_with_a_bad_config_lists_every_problem_and_exits_non_zero(tmp_path):
    raw = merged(base_config(tmp_path), {"agent": {"till_id": ""}, "api": {"threads": -1}})
    path = write_toml(tmp_path / "config.toml", raw)
    result = till_agent("run", "--config", str(path))
    assert result.returncode != 0
    assert "agent.till_id: required" in result.stderr
    assert "api.threads: must be positive" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


def test_status_prints_a_table_of_the_running_agent(agent_process):
    process = agent_process()
    process.start()
    from tests.conftest import Till

    till = Till(process.url, process.token)
    till.post("/v1/receipts", make_receipt())
    till.close()
    result = till_agent("status", "--config", str(process.config_path))
    assert result.returncode == 0, result.stderr
    assert "Till till-test of store store-test: ok" in result.stdout
    assert "engage" in result.stdout
    assert "accepted 1" in result.stdout


def test_status_says_clearly_when_the_agent_is_not_running(tmp_path):
    path = write_toml(tmp_path / "config.toml", base_config(tmp_path, 9))
    (tmp_path / "pos-token").write_text("x" * 20, encoding="ascii")
    result = till_agent("status", "--config", str(path))
    assert result.returncode != 0
    assert "does not answer" in result.stderr


@pytest.mark.linux_only(
    "a graceful stop by SIGTERM (Windows has none; the service stops through the SCM)"
)
def test_sigterm_stops_the_agent_cleanly(agent_process):
    process = agent_process()
    process.start()
    assert process.terminate() == 0
    assert '"stopped"' in process.log()


def test_second_agent_on_the_same_data_directory_refuses(agent_process, tmp_path):
    first = agent_process()
    first.start()
    second = till_agent("run", "--config", str(first.config_path))
    assert second.returncode != 0
    assert "another till-agent is already running" in second.stderr


@pytest.mark.linux_only(
    "a graceful stop by SIGTERM (Windows has none; the service stops through the SCM)"
)
def test_forget_and_purge_work_on_the_stores_when_the_agent_is_stopped(agent_process):
    process = agent_process()
    process.start()
    from tests.conftest import Till

    till = Till(process.url, process.token)
    receipt = make_receipt("R-STOPPED")
    receipt["contact"] = {"matchKey": "zz.stopped.3141@example.invalid", "matchKeyType": "Email"}
    till.post("/v1/receipts", receipt)
    till.close()
    assert process.terminate() == 0
    config = str(process.config_path)
    result = till_agent("forget", "--config", config, "--email", "zz.stopped.3141@example.invalid")
    assert result.returncode == 0, result.stderr
    assert '"queued_items_stripped": 2' in result.stdout
    assert till_agent("purge", "--config", config).returncode == 0


def test_forget_needs_a_key():
    result = till_agent("forget")
    assert result.returncode == 2
    assert "--email" in result.stderr


def test_a_taken_port_is_a_clear_error_and_leaves_nothing_running(agent_process, tmp_path):
    import socket

    from tests.conftest import base_config, write_toml

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        path = write_toml(tmp_path / "taken.toml", base_config(tmp_path, port))
        result = till_agent("run", "--config", str(path))
    assert result.returncode != 0
    assert "api.listen: cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.linux_only(
    "a graceful stop by SIGTERM (Windows has none; the service stops through the SCM)"
)
def test_the_sandbox_command_serves_the_cloud_until_stopped():
    import signal as signals
    import time

    import requests

    from tests.conftest import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "sandbox", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        answer = None
        while time.monotonic() < deadline and answer is None:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/api/v2/contacts/count", timeout=1)
            except requests.ConnectionError:
                time.sleep(0.1)
        assert answer is not None
        assert answer.status_code == 401  # it speaks Engage: no apikey, no entry
    finally:
        process.send_signal(signals.SIGTERM)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert f"127.0.0.1:{port}" in out
