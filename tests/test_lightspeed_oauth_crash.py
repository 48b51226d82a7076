"""Lightspeed's rotating refresh token across a real SIGKILL of the agent around a refresh.

Lightspeed revokes a refresh token the moment it issues the next one (changelog "2025-03
Refresh Token Flow Update"; the sandbox does exactly that). The agent is killed at each point
of a refresh and started again: before the request and after the save it carries on; in the
window between the answer and the save the new pair is lost with the process and the old
token is already revoked, so the restarted agent says, once, that the shop must authorise the
app again (status, health, doctor) and never asks the token endpoint in a loop.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.connectors import KINDS
from agent.core import config, failpoints
from agent.ops import doctor
from agent.sandbox import SandboxCloud
from tests.conftest import AgentProcess, lightspeed_oauth_secrets, write_secrets

CUSTOMERS = 30
REAUTHORISE = "must authorise the app in Lightspeed again"


def lightspeed_agent(make: Callable[..., AgentProcess], cloud: SandboxCloud) -> AgentProcess:
    """An agent whose contact source is Lightspeed over OAuth, its first refresh token set."""
    process = make(
        {
            "contacts": {"source": "lightspeed", "page_size": 10},
            "destinations": {
                "lightspeed": {
                    "kind": "lightspeed",
                    "base_url": cloud.url,
                    "auth": "oauth",
                    "client_id": "sandbox-lightspeed-client",
                }
            },
        }
    )
    credentials = Path(process.raw["agent"]["credentials_dir"])
    write_secrets(credentials, lightspeed_oauth_secrets(cloud))
    return process


def killed_at(process: AgentProcess, point: str) -> None:
    """Start the agent with point armed; it kills itself there (SIGKILL) during its first sync."""
    process.start(wait=False, env={failpoints.ENV: point})
    assert process.process is not None
    code = process.process.wait(30)
    assert code == -signal.SIGKILL, process.log()


def status(process: AgentProcess) -> dict[str, Any]:
    answer = requests.get(
        process.url + "/v1/status",
        headers={"Authorization": f"Bearer {process.token}"},
        timeout=5,
    )
    body: dict[str, Any] = answer.json()
    return body


def component(process: AgentProcess, name: str) -> dict[str, Any] | None:
    found = [c for c in status(process)["components"] if c["name"] == name]
    return found[0] if found else None


def wait_for(condition: Callable[[], bool], timeout_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if condition():
                return
        except (requests.ConnectionError, KeyError, ValueError):
            pass  # not answering yet
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def restarted(process: AgentProcess) -> None:
    process.start(wait=False)
    wait_for(lambda: requests.get(process.url + "/v1/health", timeout=1).status_code in (200, 503))


@pytest.mark.linux_only("SIGKILL at a failpoint")
@pytest.mark.parametrize(
    ("point", "spent"),
    [
        ("oauth.before_refresh", False),  # nothing asked: the configured token is still good
        ("vault.after_commit", True),  # the new pair saved before use: the restart uses it
    ],
)
def test_a_kill_before_the_refresh_or_after_the_save_keeps_working(
    agent_process, point: str, spent: bool
):
    cloud = SandboxCloud(seed=71).serve()
    try:
        cloud.lightspeed.seed_customers(CUSTOMERS)
        process = lightspeed_agent(agent_process, cloud)
        configured = next(iter(cloud.lightspeed.refresh_tokens))
        killed_at(process, point)
        assert cloud.lightspeed.refresh_requests == (1 if spent else 0)
        assert (configured in cloud.lightspeed.refresh_tokens) is not spent
        restarted(process)
        wait_for(lambda: status(process)["contacts"]["contacts"] == CUSTOMERS)
        # After the save, the saved access token serves the restart: no second refresh.
        assert cloud.lightspeed.refresh_requests == 1
        # The cache is full when the last page is applied; the run reports a moment later.
        wait_for(lambda: (component(process, "sync:lightspeed") or {}).get("state") == "ok")
        assert requests.get(process.url + "/v1/health", timeout=5).status_code == 200
    finally:
        cloud.stop()


@pytest.mark.linux_only("SIGKILL at a failpoint")
def test_a_kill_between_the_answer_and_the_save_halts_once_and_asks_for_reauthorising(
    agent_process,
):
    cloud = SandboxCloud(seed=72).serve()
    try:
        cloud.lightspeed.seed_customers(CUSTOMERS)
        process = lightspeed_agent(agent_process, cloud)
        killed_at(process, "oauth.before_save")
        assert cloud.lightspeed.refresh_requests == 1
        assert len(cloud.lightspeed.refresh_tokens) == 1  # only the pair that died with it
        restarted(process)

        def halted() -> bool:
            sync = component(process, "sync:lightspeed")
            return sync is not None and sync["state"] == "failing"

        wait_for(halted)
        detail = component(process, "sync:lightspeed")["detail"]  # type: ignore[index]
        assert REAUTHORISE in detail
        assert "refresh_token_secret" in detail
        assert "invalid_grant" in detail
        assert requests.get(process.url + "/v1/health", timeout=5).status_code == 503
        settings = config.load(process.config_path, os.environ, KINDS)
        (health,) = [c for c in doctor.answering(settings) if c.name == "health"]
        assert not health.ok
        assert REAUTHORISE in health.detail
        # More runs ask nothing more of the token endpoint: the refused token is not resent.
        for _ in range(3):
            requests.post(
                process.url + "/v1/contacts/sync",
                headers={"Authorization": f"Bearer {process.token}"},
                timeout=10,
            )
        assert cloud.lightspeed.refresh_requests == 2  # the lost pair's, and one refusal
        assert status(process)["contacts"]["contacts"] == 0
    finally:
        cloud.stop()
