"""till-agent doctor: every check on a healthy till passes; each problem is named."""

from __future__ import annotations

from agent.sandbox import SandboxCloud
from tests.test_cli import till_agent


def test_a_healthy_till_passes_every_check(agent_process):
    cloud = SandboxCloud(seed=12).serve()
    try:
        process = agent_process(
            {
                "destinations": {
                    "engage": {"base_url": cloud.url},
                    "loaded": {"base_url": cloud.url + "/loaded"},
                }
            }
        )
        process.start()
        result = till_agent("doctor", "--config", str(process.config_path))
        assert result.returncode == 0, result.stdout + result.stderr
        for name in ("disk space", "store outbox.db", "key file", "POS token", "agent"):
            assert f"ok    {name}" in result.stdout
        assert "ok    cloud engage" in result.stdout
        assert "ok    clock vs loaded" in result.stdout
    finally:
        cloud.stop()


def test_refused_credentials_and_a_stopped_agent_are_named(agent_process, tmp_path):
    cloud = SandboxCloud(seed=13).serve()
    try:
        cloud.faults.set_auth_failure("engage")
        process = agent_process(
            {
                "destinations": {
                    "engage": {"base_url": cloud.url},
                    "loaded": {"base_url": cloud.url + "/loaded"},
                }
            }
        )
        process.start()
        assert process.terminate() == 0
        result = till_agent("doctor", "--config", str(process.config_path))
        assert result.returncode != 0
        assert "FAIL  agent" in result.stdout
        assert "FAIL  cloud engage             AuthError" in result.stdout
        assert "ok    cloud loaded" in result.stdout
    finally:
        cloud.stop()
