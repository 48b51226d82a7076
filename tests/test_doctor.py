"""till-agent doctor: every check on a healthy till passes; each problem is named."""

from __future__ import annotations

import os

import pytest

from agent.connectors import KINDS
from agent.core import config, crypto
from agent.ops import doctor
from agent.sandbox import SandboxCloud
from tests.conftest import (
    base_config,
    lightspeed_oauth_secrets,
    make_receipt,
    merged,
    write_secrets,
    write_toml,
)
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
            "FAIL  cloud engage             credentials refused (HTTP 401 Unauthorized); check the "
            "secret" in result.stdout
        )
        assert "Error" not in result.stdout
        assert "ok    cloud loaded" in result.stdout
    finally:
        cloud.stop()


def test_a_key_file_wrapped_for_the_service_account_is_not_a_failure(tmp_path):
    """A technician's prompt is another account than the service's: DPAPI will not open the
    key file for it, and the doctor checks its wrapping instead of failing."""
    settings = config.from_mapping(base_config(tmp_path), {}, KINDS)
    crypto.load_or_create(settings.privacy.key_file, may_create=True, protector=XorProtector())
    (found,) = [c for c in doctor.examine(settings) if c.name == "key file"]
    assert found.detail.startswith("wrapped by xor-test for the service's account")
    assert found.ok == (os.name == "posix")  # on Windows: the DACL of a temporary folder


def test_a_cloud_that_answers_503_is_not_called_unreachable(tmp_path):
    cloud = SandboxCloud(seed=14).serve()
    try:
        cloud.faults.fail_next(503, api="engage")
        raw = merged(base_config(tmp_path), {"destinations": {"engage": {"base_url": cloud.url}}})
        path = write_toml(tmp_path / "config.toml", raw)
        result = till_agent("doctor", "--config", str(path))
        assert (
            "FAIL  cloud engage             the cloud failed (HTTP 503 Service Unavailable)"
            in result.stdout
        )
        said = result.stdout.split("cloud engage")[1].splitlines()[0]
        assert "unreachable" not in said
        assert "no answer" not in said
        cloud.faults.set_offline("refused")
        down = till_agent("doctor", "--config", str(path))
        assert (
            "FAIL  cloud engage             no answer from the cloud: could not connect (the "
            "connection was refused)" in down.stdout
        )
    finally:
        cloud.stop()


def test_the_doctor_and_the_status_say_the_same_words_about_a_cloud(start_agent, tmp_path):
    """One vocabulary: a cloud failing with 503, then answering nothing, is described by the
    status (page and API) exactly as the doctor (and so `till-install verify`) describes it."""
    import time

    from agent.ops import doctor

    cloud = SandboxCloud(seed=16).serve()
    try:
        raw = merged(
            base_config(tmp_path),
            {
                "delivery": {"enabled": True, "backoff_initial_seconds": 0.2},
                "destinations": {
                    "engage": {"base_url": cloud.url},
                    "loaded": {"base_url": cloud.url + "/loaded"},
                },
            },
        )
        agent, till = start_agent(raw)

        def loaded_detail(wanted: str) -> str:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status = till.get("/v1/status").json()
                (loaded,) = [d for d in status["destinations"] if d["name"] == "loaded"]
                if loaded["state"] == "offline" and str(loaded["detail"]).startswith(wanted):
                    return str(loaded["detail"])
                time.sleep(0.05)
            raise AssertionError(f"loaded never went offline with {wanted!r}: {loaded}")

        cloud.faults.set_error_rate(1.0, 503, api="loaded")
        till.post("/v1/receipts", make_receipt("R-1", contact=False))
        failing = loaded_detail("the cloud failed (HTTP 503 Service Unavailable)")
        (check, *_) = doctor.clouds(agent.settings, only=["loaded"])
        assert check.ok is False
        # Each answer carries the cloud's own error id; the words around it are the same.
        assert check.detail.split(", its error ")[0] == failing.split(", its error ")[0]
        assert failing in till.get("/").text

        cloud.faults.set_offline("refused")
        nothing = "no answer from the cloud: could not connect (the connection was "
        loaded_detail(nothing)  # refused, or reset on a connection kept alive
        (check, *_) = doctor.clouds(agent.settings, only=["loaded"])
        assert check.detail.startswith(nothing)
        assert "unreachable" not in till.get("/").text.split("loaded", 1)[1]
    finally:
        cloud.stop()


@pytest.mark.linux_only(
    "POSIX owner-only files in a temporary folder; the doctor on Windows: tests/wine"
)
def test_a_single_use_refresh_token_is_not_spent_and_not_called_a_failure(tmp_path):
    """Lightspeed over OAuth: only the running agent may spend the refresh token, so the doctor
    says it did not probe, as a pass, and the sandbox saw no token request."""
    cloud = SandboxCloud(seed=15).serve()
    try:
        lightspeed = {
            "kind": "lightspeed",
            "base_url": cloud.url,
            "auth": "oauth",
            "client_id": "sandbox-lightspeed-client",
        }
        raw = merged(base_config(tmp_path), {"destinations": {"lightspeed": lightspeed}})
        credentials = tmp_path / "credentials"
        write_secrets(credentials, lightspeed_oauth_secrets(cloud))
        path = write_toml(tmp_path / "config.toml", raw)
        result = till_agent("doctor", "--config", str(path))
        line = next(x for x in result.stdout.splitlines() if "cloud lightspeed" in x)
        assert line.startswith("ok"), line
        assert "not probed here" in line
        assert not [r for r in cloud.requests if "token" in r.path]
    finally:
        cloud.stop()
