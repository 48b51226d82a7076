"""till-install install and verify, end to end into a temporary root (the OS faked at its edge)."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

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
    # Changed deliberately (issue 19): a staged root writes the target system's paths, as the
    # unit does; the drop-in named the staging directory before.
    target = "/etc/till-agent/credentials"
    assert f"LoadCredential=engage-test-api-key:{target}/engage-test-api-key" in dropin
    assert str(root) not in dropin
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
    assert "credentials refused (HTTP 401 Unauthorized); check the secret" in result.output
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


SERVICE_IDS = (4242, 4243)  # an account that exists only in the fake (the tests run as root)


def _owners(path):
    return path.stat().st_uid, path.stat().st_gid


@pytest.mark.linux_only("the till-agent user and chown")
def test_install_as_root_gives_the_service_its_data_and_keeps_secrets_roots(
    root, tmp_path, answers_file
):
    # Changed deliberately (issue 19): the secrets were the service user's, so the agent could
    # rewrite its own credentials; now they are root's and systemd hands the agent a copy.
    from click.testing import CliRunner

    from installer.cli import main
    from tests.installer.fakes import FakeHost

    where = steps.layout(root)
    where.log_dir.mkdir(parents=True)
    stale = where.log_dir / "till-agent-2026-11-23.log"  # left by a run as root
    stale.write_text("{}\n")
    host = FakeHost(where, admin=True, account=SERVICE_IDS)
    try:
        args = ["install", "--non-interactive", "--answers", str(answers_file()), "--offline"]
        result = CliRunner().invoke(main, [*args, "--root", str(root)], obj=host)
    finally:
        host.stop()
    assert result.exit_code == 0, result.output
    assert _owners(where.token_file) == (0, 0)
    assert _owners(where.credentials_dir / "engage-test-api-key") == (0, 0)
    assert _owners(where.credentials_dir) == (0, 0)
    assert _owners(where.config_file) == (0, SERVICE_IDS[1])
    assert _owners(where.data_dir) == SERVICE_IDS
    assert _owners(stale) == SERVICE_IDS
    assert not host.commands_named("useradd")  # a staged root never touches the host's users


@pytest.mark.linux_only("chown and uids")
def test_verify_flags_a_secret_the_service_owns(root, answers_file):
    from click.testing import CliRunner

    from installer.cli import main
    from tests.installer.fakes import FakeHost

    where = steps.layout(root)
    host = FakeHost(where, admin=True, account=SERVICE_IDS)
    try:
        args = ["install", "--non-interactive", "--answers", str(answers_file()), "--offline"]
        assert CliRunner().invoke(main, [*args, "--root", str(root)], obj=host).exit_code == 0
        os.chown(where.credentials_dir / "engage-test-api-key", *SERVICE_IDS)
        result = CliRunner().invoke(main, ["verify", "--offline", "--root", str(root)], obj=host)
    finally:
        host.stop()
    assert result.exit_code == 1
    assert "FAIL  secret engage-test-api-key" in result.output
    assert "belongs to uid 4242, not root" in result.output


@pytest.mark.linux_only("the paths the systemd unit hides")
@pytest.mark.parametrize(
    ("program", "python", "home", "hidden"),
    [
        ("/opt/till-agent/bin/till-agent", "/usr/bin/python3.11", "/usr", []),
        (
            "/opt/till-agent/bin/till-agent",
            "/root/.pyenv/versions/3.11.7/bin/python3.11",
            "/root/.pyenv/versions/3.11.7",
            ["its Python", "the Python's library"],
        ),
        ("/home/tech/venv/bin/till-agent", "/usr/bin/python3.11", "/usr", ["the program"]),
        ("/tmp/x/bin/till-agent", "/usr/bin/python3.11", "/usr", ["the program"]),
        ("/var/tmp/x/bin/till-agent", "/usr/bin/python3.11", "/usr", ["the program"]),
        ("/run/user/0/x/till-agent", "/usr/bin/python3.11", "/usr", ["the program"]),
        ("/rootless/bin/till-agent", "/usr/bin/python3.11", "/usr", []),
    ],
)
def test_a_program_the_unit_would_hide_is_named(program, python, home, hidden):
    found = steps.hidden_from_service(Path(program), Path(python), Path(home))
    assert [f.split(" is under ")[0] for f in found] == hidden


@pytest.mark.linux_only("useradd")
def test_ensure_user_makes_the_system_user_once(root):
    from tests.installer.fakes import FakeHost

    host = FakeHost(steps.layout(root), admin=True, account=None)
    assert steps.ensure_user(host, steps.layout(None)) == steps.Owner()
    (useradd,) = host.commands_named("useradd")
    assert useradd[-1] == "till-agent"
    assert "--system" in useradd
    assert "/usr/sbin/nologin" in useradd


def _install(host, root, *extra):
    from click.testing import CliRunner

    from installer.cli import main
    from tests.installer.conftest import answers_text

    path = root.parent / "answers.toml"
    path.write_text(answers_text(free_port()))
    args = ["install", "--non-interactive", "--answers", str(path), "--offline", *extra]
    return CliRunner().invoke(main, [*args, "--root", str(root)], obj=host)


@pytest.mark.linux_only("a machine without a running systemd")
def test_install_without_systemd_writes_everything_and_says_how_to_finish(root):
    from tests.installer.fakes import FakeHost

    host = FakeHost(steps.layout(root), systemd=False)
    result = _install(host, root)
    assert result.exit_code == 0, result.output
    where = steps.layout(root)
    assert where.config_file.exists()
    assert (where.unit_dir / "till-agent.service").exists()
    assert "Installed, not started: no systemd is running on this machine" in result.output
    assert "not done: systemctl daemon-reload and start" in result.output
    assert "sudo systemctl daemon-reload && sudo systemctl start till-agent" in result.output
    assert "in a container without systemd: run" in result.output
    assert f"POS token: in {where.token_file}" in result.output
    assert ["systemctl", f"--root={root}", "enable", "till-agent.service"] in host.calls
    assert not [
        c for c in host.calls if c[:2] in (["systemctl", "start"], ["systemctl", "restart"])
    ]
    assert host.agent is None


@pytest.mark.linux_only("staging a systemd image")
def test_install_no_start_stages_an_image_without_touching_this_machines_services(root):
    from tests.installer.fakes import FakeHost

    host = FakeHost(steps.layout(root))
    result = _install(host, root, "--no-start")
    assert result.exit_code == 0, result.output
    assert "Installed, not started: --no-start was given" in result.output
    assert [c for c in host.calls if c[0] == "systemctl"] == [
        ["systemctl", f"--root={root}", "enable", "till-agent.service"]
    ]
    assert host.agent is None


@pytest.mark.linux_only("staging a systemd image")
def test_a_staged_root_writes_the_target_systems_paths_in_every_file(root):
    from tests.installer.fakes import FakeHost

    host = FakeHost(steps.layout(root))
    assert _install(host, root, "--no-start").exit_code == 0
    written = [p for p in root.rglob("*") if p.is_file() and p.parent.name != "credentials"]
    assert {p.name for p in written} >= {"config.toml", "till-agent.service", "credentials.conf"}
    for path in written:
        assert str(root) not in path.read_text(errors="replace"), path
    raw = tomllib.loads(steps.layout(root).config_file.read_text())
    assert set(raw["agent"]) == {"store_id", "till_id"}  # systemd gives the folders


@pytest.mark.linux_only("a machine without a running systemd")
def test_verify_without_systemd_says_why_the_service_cannot_be_checked(root):
    from click.testing import CliRunner

    from installer.cli import main
    from tests.installer.fakes import FakeHost

    host = FakeHost(steps.layout(root), systemd=False)
    assert _install(host, root).exit_code == 0
    result = CliRunner().invoke(main, ["verify", "--offline", "--root", str(root)], obj=host)
    assert result.exit_code == 1
    assert "FAIL  service" in result.output
    assert "no systemd is running on this machine" in result.output
    assert "nothing answers at http://127.0.0.1:" in result.output
    assert "the agent is not running" in result.output


def test_verify_explains_a_stopped_service(host, invoke, installed):
    host.stop()
    result = invoke("verify", "--offline")
    assert "inactive: not running: start it with `systemctl start till-agent`" in result.output


def test_verify_tells_a_running_agent_with_a_problem_from_a_silent_one(host, invoke, installed):
    assert host.agent is not None
    host.agent.health.report("storage", "failing", "the disk is full")
    result = invoke("verify", "--offline")
    assert result.exit_code == 1
    assert "ok    port" in result.output  # it answers: the port is fine
    assert "FAIL  health" in result.output
    assert "the agent reports a problem: storage: the disk is full" in result.output


@pytest.mark.linux_only("staging a systemd image")
def test_staging_an_image_for_real_needs_no_running_systemd(root, tmp_path):
    """The real installer and the real systemctl (offline, --root): this machine has no
    systemd as PID 1, like an image build or a chroot."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.installer.conftest import answers_text

    answers = tmp_path / "answers.toml"
    answers.write_text(answers_text(free_port()))
    args = ["--non-interactive", "--answers", str(answers), "--offline", "--no-start"]
    done = subprocess.run(
        [sys.executable, "-m", "installer", "install", *args, "--root", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Installed, not started" in done.stdout
    wants = root / "etc/systemd/system/multi-user.target.wants/till-agent.service"
    assert wants.is_symlink()
    assert str(wants.readlink()) == "/etc/systemd/system/till-agent.service"  # the target's


def test_the_wizard_asks_again_until_each_answer_is_right(root, host, invoke):
    port = free_port()
    typed = [
        "  ",  # store id: blank, asked again
        "S042",
        "T03",
        "test",
        "99999",  # port out of range: asked again
        str(port),
        "engage",
        "Engage Cloud",  # not a name: asked again
        "",  # the default: engage
        "acme.staging.voyado.com",  # no scheme: asked again, at once
        "http://127.0.0.1:9/",
        " ",  # the secret: blank, asked again
        "wizard-engage-key",
        "",  # done
    ]
    result = invoke("install", "--offline", input="\n".join(typed) + "\n")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "Error: an answer is required" in result.output
    assert "99999 is not in the range" in result.output
    assert "Error: 1-32 of a-z, 0-9 and _, starting with a letter" in result.output
    assert "an http:// or https:// URL with a host (got 'acme.staging.voyado.com')" in (
        result.output
    )
    raw = tomllib.loads(steps.layout(root).config_file.read_text())
    assert raw["api"]["listen"] == f"127.0.0.1:{port}"
    assert raw["destinations"]["engage"]["base_url"] == "http://127.0.0.1:9/"


def test_an_answers_file_lists_every_problem_of_every_kind_in_one_pass(root, invoke, tmp_path):
    path = tmp_path / "answers.toml"
    text = answers_text(free_port()).replace("port = ", "colour = 'red'\nport = 99999\n#")
    text = text.replace('api_key = "sandbox-engage-key"', 'api_versoin = "v2"')
    text = text.replace(
        'base_url = "http://127.0.0.1:9/"\nclient_id', 'base_url = "loaded.example"\nclient_id', 1
    )
    text += "\n[config.delivery]\nmax_attempts = -1\nretries = 3\n"
    path.write_text(text)
    result = invoke("install", "--non-interactive", "--answers", str(path), "--offline")
    assert result.exit_code == 1
    for problem in (
        "colour: unknown key",  # structure
        "port: a port number 1-65535 (got 99999)",  # a value
        "destinations.engage.test.api_key: required (a secret)",  # a secret
        "destinations.loaded.test.base_url: an http:// or https:// URL",  # a value
        "delivery.max_attempts: must be positive (got -1)",  # a config value
        "delivery.retries: unknown key",  # a config key
        "destinations.engage.api_versoin: unknown key",  # a connector's key
    ):
        assert problem in result.output, problem
    assert "answer-missing" not in result.output  # the placeholders never show
    assert not steps.layout(root).config_file.exists()
