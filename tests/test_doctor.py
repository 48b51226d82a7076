"""till-agent doctor: every check on a healthy till passes; each problem is named."""

from __future__ import annotations

import os

import pytest

from agent import config, crypto, doctor
from agent.sandbox import SandboxCloud
from tests.conftest import base_config
from tests.test_cli import till_agent
from tests.test_crypto import XorProtector


@pytest.mark.linux_only(
    "POSIX owner-only files in a temporary folder; the doctor on Windows: tests/wine"
)
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
        for name in ("disk space", "store outbox.db", "key file", "POS token", "port", "health"):
            assert f"ok    {name}" in result.stdout
        assert "ok    cloud engage" in result.stdout
        assert "ok    clock vs loaded" in result.stdout
    finally:
        cloud.stop()


@pytest.mark.linux_only("a graceful stop by SIGTERM")
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
        # Changed deliberately (issue 19): the doctor and verify say the same, in words; before
        # this read "FAIL agent" and "FAIL cloud engage AuthError" (a Python class name).
        assert "FAIL  port" in result.stdout
        assert "the agent is not running" in result.stdout
        assert (
            "FAIL  cloud engage             credentials refused (HTTP 401); check the secret"
            in result.stdout
        )
        assert "Error" not in result.stdout
        assert "ok    cloud loaded" in result.stdout
    finally:
        cloud.stop()


def test_a_key_file_wrapped_for_the_service_account_is_not_a_failure(tmp_path):
    """A technician's prompt is another account than the service's: DPAPI will not open the
    key file for it, and the doctor checks its wrapping instead of failing."""
    settings = config.from_mapping(base_config(tmp_path), {})
    crypto.load_or_create(settings.privacy.key_file, may_create=True, protector=XorProtector())
    (found,) = [c for c in doctor.examine(settings) if c.name == "key file"]
    assert found.detail.startswith("wrapped by xor-test for the service's account")
    assert found.ok == (os.name == "posix")  # on Windows: the DACL of a temporary folder


def test_a_cloud_that_answers_503_is_not_called_unreachable(tmp_path):
    from tests.conftest import base_config, merged, write_toml

    cloud = SandboxCloud(seed=14).serve()
    try:
        cloud.faults.fail_next(503, api="engage")
        raw = merged(base_config(tmp_path), {"destinations": {"engage": {"base_url": cloud.url}}})
        path = write_toml(tmp_path / "config.toml", raw)
        result = till_agent("doctor", "--config", str(path))
        assert "FAIL  cloud engage             the cloud answered HTTP 503" in result.stdout
        assert "unreachable" not in result.stdout.split("cloud engage")[1].splitlines()[0]
        cloud.faults.set_offline("refused")
        down = till_agent("doctor", "--config", str(path))
        assert "FAIL  cloud engage             unreachable: nothing answered" in down.stdout
    finally:
        cloud.stop()
