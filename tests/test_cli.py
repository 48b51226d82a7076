"""The till-agent command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.sandbox import SandboxCloud
from tests.conftest import ROOT, Till, base_config, make_receipt, merged, write_toml


def till_agent(*args: str, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """`till-agent ARGS` in a subprocess; umask: the one it starts with (-1: ours)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=umask,
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
    # Changed deliberately (issue 19): one line saying so and what to do, not the raw
    # HTTPConnectionPool error it printed before.
    assert result.stderr.count("\n") == 1
    assert "the agent is not running: nothing answers at http://127.0.0.1:9" in result.stderr
    assert "systemctl start till-agent" in result.stderr
    assert "HTTPConnectionPool" not in result.stderr


def test_status_without_the_token_file_is_one_line(tmp_path):
    path = write_toml(tmp_path / "config.toml", base_config(tmp_path, 9))
    result = till_agent("status", "--config", str(path))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert f"cannot read the POS token {tmp_path / 'pos-token'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_sandbox_on_a_busy_port_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = till_agent("sandbox", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot listen on 127.0.0.1:")
    assert "choose another --port" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_on_a_busy_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = write_toml(tmp_path / "config.toml", base_config(tmp_path, taken.getsockname()[1]))
        result = till_agent("run", "--config", str(path))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ")
    assert "cannot listen on 127.0.0.1:" in last
    assert "Traceback" not in result.stderr


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
    receipt["contact"] = {"matchKey": "zz.stopped.3141@example.com", "matchKeyType": "email"}
    till.post("/v1/receipts", receipt)
    till.close()
    assert process.terminate() == 0
    config = str(process.config_path)
    result = till_agent("forget", "--config", config, "--email", "zz.stopped.3141@example.com")
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


@pytest.mark.linux_only("a graceful stop by SIGTERM")
def test_retry_now_asks_the_running_agent_and_says_when_it_is_not(agent_process, tmp_path):
    process = agent_process({"delivery": {"enabled": True}})
    process.start()
    result = till_agent("retry-now", "--config", str(process.config_path))
    assert result.returncode == 0, result.stderr
    assert "trying now: engage, loaded" in result.stdout
    result = till_agent("retry-now", "--config", str(process.config_path), "nope")
    assert result.returncode != 0
    assert "no destination 'nope'" in result.stderr
    assert process.terminate() == 0
    result = till_agent("retry-now", "--config", str(process.config_path))
    assert result.returncode != 0
    assert "the agent is not running" in result.stderr


@pytest.mark.linux_only("the printed curl in a POSIX shell, SIGINT, /etc and /var")
def test_serve_demo_runs_on_a_fresh_machine_and_its_curl_works(tmp_path):
    """Its own folder for everything (no /etc or /var/log), a URL, a token and a curl to paste."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve-demo", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        printed = [process.stdout.readline() for _ in range(11)]
        text = "".join(printed)
        url = re.search(r"URL: +(\S+)", text)
        folder = re.search(r"Folder: +(\S+)", text)
        assert url, text
        assert folder, text
        curl = "".join(printed[6:9]).replace("\\\n", " ").strip()
        posted = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        assert json.loads(posted.stdout)["status"] == "queued", posted.stdout + posted.stderr
        shown = subprocess.run(
            printed[9].strip(), shell=True, capture_output=True, text=True, timeout=30
        )
        assert json.loads(shown.stdout)["uniqueReceiptId"] == "DEMO-0001"
        assert (Path(folder[1]) / "logs").is_dir()
        assert (Path(folder[1]) / "credentials" / "engage-api-key").exists()
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert not Path(folder[1]).exists()  # the throw-away folder goes with it
    for system_path in ("/etc/till-agent", "/var/log/till-agent", "/var/lib/till-agent"):
        assert not Path(system_path).exists()


def test_run_lists_every_problem_of_every_kind_in_one_pass(tmp_path):
    raw = merged(
        base_config(tmp_path),
        {
            "telemetry": {"on": True},  # structure: an unknown section
            "api": {"threads": -1},  # a value
            "delivery": {"retries": 3},  # an unknown key
            "destinations": {
                "engage": {"api_key_secret": "no-such-secret", "api_versoin": "v2"},
            },
        },
    )
    path = write_toml(tmp_path / "config.toml", raw)
    result = till_agent("run", "--config", str(path))
    assert result.returncode == 1
    for problem in (
        "telemetry: unknown section",
        "api.threads: must be positive (got -1)",
        "delivery.retries: unknown key",
        "destinations.engage.api_key_secret: secret 'no-such-secret' unreadable",
        "destinations.engage.api_versoin: unknown key",
    ):
        assert problem in result.stderr, problem
    assert not (tmp_path / "data").exists()  # nothing was started


def test_set_aside_items_are_listed_in_words_released_and_dead_lettered(agent_process):
    """Issue 14 §6: a technician can unstick anything, through the running agent."""
    cloud = SandboxCloud(seed=6).serve()
    try:
        process = agent_process(
            {
                "delivery": {
                    "enabled": True,
                    "backoff_initial_seconds": 300,
                    "backoff_max_seconds": 300,
                    "set_aside_after_attempts": 1,
                },
                "destinations": {
                    "engage": {"enabled": False},
                    "loaded": {"base_url": cloud.url + "/loaded"},
                },
            }
        )
        process.start()
        till = Till(process.url, process.token)
        cloud.faults.reject_ids(["STUCK-1", "STUCK-2"], 500)
        for receipt_id in ("STUCK-1", "STUCK-2", "GOOD-1"):
            assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202
        config_path = str(process.config_path)
        deadline = time.monotonic() + 20
        while (
            len(till.get("/v1/set-aside").json()["items"]) < 2
            or "GOOD-1" not in cloud.loaded.orders
        ):
            assert time.monotonic() < deadline, till.get("/v1/set-aside").text
            time.sleep(0.1)
        listed = till_agent("set-aside", "list", "--config", config_path)
        assert listed.returncode == 0, listed.stderr
        first, second = listed.stdout.splitlines()
        assert "STUCK-1" in first
        assert "the cloud failed (HTTP 500 Internal Server Error)" in first
        assert "Error:" not in listed.stdout  # words, never a class name
        stuck_1, stuck_2 = first.split()[0], second.split()[0]
        shown_page = till.get("/").text
        assert "till-agent set-aside release ITEM" in shown_page
        assert f"<td>{stuck_1}</td>" in shown_page
        assert "the cloud failed (HTTP 500 Internal Server Error)" in shown_page
        shown = till_agent("set-aside", "show", stuck_1, "--config", config_path)
        assert json.loads(shown.stdout)["recordKey"] == "STUCK-1"
        cloud.faults.clear()
        released = till_agent("set-aside", "release", stuck_1, "--config", config_path)
        assert released.returncode == 0, released.stderr
        dead = till_agent("set-aside", "dead-letter", stuck_2, "--config", config_path)
        assert dead.returncode == 0, dead.stderr
        while "STUCK-1" not in cloud.loaded.orders or not till.get("/v1/dead-letters").json():
            assert time.monotonic() < deadline + 10
            time.sleep(0.1)
        (letter,) = till.get("/v1/dead-letters").json()
        assert letter["recordKey"] == "STUCK-2"
        assert (
            letter["reason"] == "dead-lettered by a technician (till-agent set-aside dead-letter)"
        )
        assert "STUCK-2" not in cloud.loaded.orders
        assert till.get("/v1/set-aside").json()["items"] == []
        again = till_agent("set-aside", "release", stuck_1, "--config", config_path)
        assert again.returncode != 0
        assert "no set-aside item" in again.stderr or "no such" in again.stderr
        till.close()
    finally:
        cloud.stop()


def test_retry_now_with_the_agent_stopped_is_one_line_that_says_what_happens(tmp_path):
    path = write_toml(tmp_path / "config.toml", base_config(tmp_path, 9))
    (tmp_path / "pos-token").write_text("x" * 20, encoding="ascii")
    result = till_agent("retry-now", "loaded", "--config", str(path))
    assert result.returncode != 0
    assert result.stderr == (
        "Error: the agent is not running: everything waiting is tried as soon as it starts\n"
    )
