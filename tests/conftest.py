"""Fixtures for the agent's tests: settings in tmp_path, a running agent, a subprocess agent."""

from __future__ import annotations

import copy
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent import app
from agent.connectors import KINDS
from agent.core import config

# tests/ci.py: under CI=true a skip fails; `need(available, reason)` for tool-dependent tests.
pytest_plugins = ["tests.ci"]

ROOT = Path(__file__).resolve().parent.parent


def base_config(tmp_path: Path, port: int = 0) -> dict[str, Any]:
    """A complete raw config: two destinations (Engage-like and analytics), all under tmp_path."""
    write_secrets(tmp_path / "credentials")
    return {
        "agent": {
            "store_id": "store-test",
            "till_id": "till-test",
            "data_dir": str(tmp_path / "data"),
            "log_dir": str(tmp_path / "logs"),
            "credentials_dir": str(tmp_path / "credentials"),
        },
        "api": {"listen": f"127.0.0.1:{port}", "token_file": str(tmp_path / "pos-token")},
        # Unit tests drive delivery step by step; end-to-end tests turn it on.
        "delivery": {"enabled": False},
        "destinations": {
            "engage": {"kind": "engage", "base_url": "http://127.0.0.1:9/"},
            "loaded": {
                "kind": "loaded",
                "base_url": "http://127.0.0.1:9/",
                "client_id": "sandbox-client",
            },
        },
    }


SECRETS = {
    "engage-api-key": "sandbox-engage-key",
    "loaded-client-secret": "sandbox-secret",
    "lightspeed-token": "sandbox-lightspeed-token",
    "webhook-signing-secret": "sandbox-webhook-secret",
}


def write_secrets(directory: Path, secrets: dict[str, str] = SECRETS) -> None:
    """Credentials (the sandbox cloud's by default), as files in a credentials directory
    (owner-only)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, value in secrets.items():
        path = directory / name
        path.write_text(value, encoding="utf-8")
        path.chmod(0o600)


def lightspeed_oauth_secrets(cloud: Any) -> dict[str, str]:
    """The client secret and a fresh single-use refresh token for the sandbox's Lightspeed."""
    return {
        "lightspeed-client-secret": "sandbox-lightspeed-secret",
        "lightspeed-refresh-token": cloud.lightspeed.issue_refresh_token(),
    }


def merged(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """raw with overrides applied table by table, at any depth."""
    result = copy.deepcopy(raw)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def make_receipt(
    receipt_id: str = "R-0001", *, lines: int = 2, contact: bool = True
) -> dict[str, Any]:
    """A valid receipt: `lines` lines of 10.00, a card payment, optionally a synthetic contact."""
    items = [
        {
            "type": "PURCHASE",
            "sku": f"SKU-{n}",
            "articleNumber": f"ART-{n}",
            "articleName": f"Test article {n}",
            "quantity": 1,
            "grossPaidPrice": "10.00",
            "taxAmount": "2.00",
            "taxPercent": "25",
        }
        for n in range(lines)
    ]
    receipt: dict[str, Any] = {
        "uniqueReceiptId": receipt_id,
        "receiptNumber": receipt_id.split("-")[-1],
        "createdDate": "2026-11-23T10:15:00+01:00",
        "storeExternalId": "store-test",
        "currency": "SEK",
        "totalGrossPrice": f"{10 * lines}.00",
        "paymentMethods": [{"type": "card", "value": f"{10 * lines}.00"}],
        "items": items,
    }
    if contact:
        receipt["contact"] = {"matchKey": "+46700000001", "matchKeyType": "mobilePhone"}
    return receipt


def wait_for(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Until condition() holds, looked at every 50 ms; AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class Till:
    """A POS stand-in: a keep-alive requests session with the token, against one agent URL."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return self.session.post(self.url + path, json=body, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=10, **kwargs)

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., tuple[app.Agent, Till]]]:
    """Start an in-process agent (real waitress on 127.0.0.1:0, real SQLite in tmp_path)."""
    running: list[tuple[app.Agent, Till]] = []

    def start(overrides: dict[str, Any] | None = None) -> tuple[app.Agent, Till]:
        settings = config.from_mapping(merged(base_config(tmp_path), overrides or {}), {}, KINDS)
        agent = app.start(settings)
        till = Till(agent.url, agent.token)
        running.append((agent, till))
        return agent, till

    yield start
    for agent, till in reversed(running):
        till.close()
        agent.stop()


@pytest.fixture
def agent_till(start_agent: Callable[..., tuple[app.Agent, Till]]) -> tuple[app.Agent, Till]:
    return start_agent()


def free_port() -> int:
    """A loopback port free now, for a process that binds it a moment later.

    Taken below Linux's ephemeral range (32768-60999), from which every outgoing connection on
    the machine draws its local port: a port picked there can be taken by some client's
    connection before the agent binds it (seen when several suites run at once).
    """
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port between 20000 and 32000")


def write_toml(path: Path, raw: dict[str, Any]) -> Path:
    """A tiny TOML writer for our flat test configs (strings, numbers, booleans, lists)."""
    lines: list[str] = []
    for section, values in raw.items():
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        for name, table in tables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class AgentProcess:
    """`till-agent run` in a real subprocess, so tests can SIGKILL and restart it."""

    def __init__(self, tmp_path: Path, overrides: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        self.raw = merged(base_config(tmp_path, self.port), overrides or {})
        self.config_path = write_toml(tmp_path / "config.toml", self.raw)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "agent-stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(
        self, *, wait: bool = True, env: dict[str, str] | None = None, umask: int = -1
    ) -> None:
        """Spawn the agent; env adds variables (TILL_AGENT_FAILPOINTS for the crash tests);
        umask is the one it starts with (-1: this process's)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                cwd=ROOT,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                umask=umask,
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout_seconds: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited {self.process.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/v1/health", timeout=0.5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"agent not healthy in {timeout_seconds}s: {self.log()}")

    @property
    def token(self) -> str:
        return Path(self.raw["api"]["token_file"]).read_text(encoding="ascii").strip()

    def kill(self) -> None:
        """No cleanup, no flush: SIGKILL on Linux, TerminateProcess on Windows."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def terminate(self, timeout_seconds: float = 15.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_seconds)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    made: list[AgentProcess] = []

    def make(overrides: dict[str, Any] | None = None) -> AgentProcess:
        process = AgentProcess(tmp_path, overrides)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop_quietly()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--wine",
        action="store_true",
        help="run the tests marked wine: the Windows path under Wine (make test-windows)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that run in another target skip, saying which: the Wine tests unless --wine (they
    run in `make test-windows`), and on Windows the tests marked linux_only (`make test`)."""
    for item in items:
        reason = _runs_elsewhere(item, wine=bool(config.getoption("--wine")))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def _runs_elsewhere(item: pytest.Item, *, wine: bool) -> str | None:
    if item.get_closest_marker("wine") is not None and not wine:
        return "runs elsewhere: make test-windows (the Windows path under Wine)"
    marker = item.get_closest_marker("linux_only")
    if marker is not None and os.name == "nt":
        return f"runs elsewhere: on Linux (make test): {marker.args[0]}"
    return None
