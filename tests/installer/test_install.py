"""till-install install and verify, end to end into a temporary root (the OS faked at its edge)."""

from __future__ import annotations

import os
import stat
import tomllib

import pytest
import requests

from installer import steps
from tests.conftest import free_port
from tests.installer.conftest import answers_text

SECRET_VALUES = ("sandbox-engage-key", "sandbox-secret")


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.linux_only("POSIX modes; the Windows DACLs are checked under Wine (tests/wine)")
def test_install_from_answers_file_writes_everything_and_starts_the_agent(root, host, installed):
    where = steps.layout(root)
    assert mode(where.config_file) == 0o640
    assert mode(where.credentials_dir) == 0o700
    assert mode(where.data_dir) == 0o700
    secrets = {p.name: p for p in where.credentials_dir.iterdir()}
    assert set(secrets) == {"pos-token", "engage-test-api-key", "loaded-test-client-secret"}
    assert all(mode(p) == 0o600 for p in secrets.values())
    assert secrets["engage-test-api-key"].read_text().strip() == "sandbox-engage-key"
    config_text = where.config_file.read_text()
    assert not any(value in config_text for value in SECRET_VALUES)
    raw = tomllib.loads(config_text)
    assert raw["destinations"]["engage"]["profile"] == "test"
    assert raw["destinations"]["engage"]["profiles"]["test"]["api_key_secret"] == (
        "engage-test-api-key"
    )
    assert host.agent is not None
    assert requests.get(host.agent.url + "/v1/health", timeout=5).status_code == 200


def test_install_prints_where_the_token_is_never_a_secret(root, host, installed):
    token = steps.layout(root).token_file.read_text().strip()
    assert f"POS token: in {steps.layout(root).token_file}" in installed.output
    for secret in (token, *SECRET_VALUES):
        assert secret not in installed.output


@pytest.mark.linux_only("the systemd unit")
def test_install_registers_the_unit_and_its_credentials(root, host, installed):
    unit_dir = steps.layout(root).unit_dir
    unit = (unit_dir / "till-agent.service").read_text()
    assert f"ExecStart={steps.program_path()} run" in unit
    dropin = (unit_dir / "till-agent.service.d" / "credentials.conf").read_text()
    credentials = steps.layout(root).credentials_dir
    assert f"LoadCredential=engage-test-api-key:{credentials}/engage-test-api-key" in dropin
    assert "pos-token" not in dropin  # the unit loads it itself
    assert ["systemctl", "daemon-reload"] in host.calls
    assert ["systemctl", "enable", "till-agent.service"] in host.calls


def test_install_twice_keeps_the_token(root, host, invoke, answers_file, installed):
    token = steps.layout(root).token_file.read_text()
    again = invoke("install", "--non-interactive", "--answers", str(answers_file()), "--offline")
    assert again.exit_code == 0, again.output
    assert steps.layout(root).token_file.read_text() == token


def test_install_interactive_wizard(root, host, invoke):
    port = free_port()
    typed = [
        "S042",  # store id
        "T03",  # till id
        "test",  # environment
        str(port),
        "engage",  # cloud
        "",  # name: engage
        "http://127.0.0.1:9/",
        "wizard-engage-key",
        "",  # done
    ]
    result = invoke("install", "--offline", input="\n".join(typed) + "\n")
    assert result.exit_code == 0, result.output
    assert "wizard-engage-key" not in result.output  # typed hidden, never echoed
    assert host.agent is not None
    assert host.agent.url.endswith(f":{port}")
    raw = tomllib.loads(steps.layout(root).config_file.read_text())
    assert raw["agent"]["store_id"] == "S042"
    assert set(raw["destinations"]) == {"engage"}


def test_install_refuses_incomplete_answers_and_writes_nothing(root, host, invoke, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(answers_text(free_port()).replace('api_key = "sandbox-engage-key"', ""))
    result = invoke("install", "--non-interactive", "--answers", str(path), "--offline")
    assert result.exit_code == 1
    assert "destinations.engage.test.api_key: required" in result.output
    assert not steps.layout(root).config_file.exists()


def test_install_non_interactive_needs_answers(invoke):
    result = invoke("install", "--non-interactive")
    assert result.exit_code == 2
    assert "--answers" in result.output


@pytest.fixture
def sandbox():
    from agent.sandbox import SandboxCloud

    cloud = SandboxCloud(seed=1).serve()
    yield cloud
    cloud.stop()


def test_install_verifies_each_cloud_and_the_clock(invoke, answers_file, sandbox):
    path = answers_file(engage_url=sandbox.url, loaded_url=sandbox.url + "/loaded")
    result = invoke("install", "--non-interactive", "--answers", str(path))
    assert result.exit_code == 0, result.output
    assert "cloud engage" in result.output
    assert "reachable and authorised" in result.output
    assert "clock vs engage" in result.output


def test_install_reports_refused_credentials_clearly(root, invoke, answers_file, sandbox):
    path = answers_file(
        engage_url=sandbox.url, loaded_url=sandbox.url + "/loaded", engage_key="wrong-key"
    )
    result = invoke("install", "--non-interactive", "--answers", str(path))
    assert result.exit_code == 1
    assert "FAIL  cloud engage" in result.output
    assert "credentials refused (HTTP 401)" in result.output
    assert "installed, but a cloud check failed: cloud engage" in result.output
    assert "wrong-key" not in result.output
    assert steps.layout(root).config_file.exists()  # installed: fix it with configure --secret


@pytest.mark.linux_only("POSIX modes; verify's DACL checks run under Wine (tests/wine)")
def test_verify_passes_on_a_fresh_install(invoke, installed):
    result = invoke("verify", "--offline")
    assert result.exit_code == 0, result.output
    for name in ("service", "port", "config file", "secret pos-token", "disk space"):
        assert name in result.output


def test_verify_flags_a_secret_others_can_read(root, invoke, installed):
    (steps.layout(root).credentials_dir / "engage-test-api-key").chmod(0o644)
    result = invoke("verify", "--offline")
    assert result.exit_code == 1
    assert "FAIL  secret engage-test-api-key" in result.output


def test_verify_flags_a_stopped_service(host, invoke, installed):
    host.stop()
    result = invoke("verify", "--offline")
    assert result.exit_code == 1
    assert "FAIL  service" in result.output
    assert "FAIL  port" in result.output


@pytest.mark.linux_only("the till-agent user and chown")
def test_install_as_root_gives_files_to_the_service_user(root, tmp_path, answers_file):
    from click.testing import CliRunner

    from installer.cli import main
    from tests.installer.fakes import FakeHost

    host = FakeHost(steps.layout(root).config_file, admin=True, account=(os.getuid(), os.getgid()))
    try:
        args = ["install", "--non-interactive", "--answers", str(answers_file()), "--offline"]
        result = CliRunner().invoke(main, [*args, "--root", str(root)], obj=host)
    finally:
        host.stop()
    assert result.exit_code == 0, result.output
    token = steps.layout(root).token_file
    assert (token.stat().st_uid, token.stat().st_gid) == (os.getuid(), os.getgid())
    assert not host.commands_named("useradd")  # a staged root never touches the host's users


@pytest.mark.linux_only("useradd")
def test_ensure_user_makes_the_system_user_once(root):
    from tests.installer.fakes import FakeHost

    host = FakeHost(root / "none", admin=True, account=None)
    assert steps.ensure_user(host, steps.layout(None)) == steps.Owner()
    (useradd,) = host.commands_named("useradd")
    assert useradd[-1] == "till-agent"
    assert "--system" in useradd
    assert "/usr/sbin/nologin" in useradd
