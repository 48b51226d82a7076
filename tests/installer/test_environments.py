"""Switching a till between test and production, and configure checking new credentials first."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator

import pytest

from installer import steps
from tests.conftest import Till, free_port, make_receipt


@pytest.fixture
def sandbox() -> Iterator[object]:
    from agent.sandbox import SandboxCloud

    cloud = SandboxCloud(seed=1).serve()
    yield cloud
    cloud.stop()


def two_environments(url: str, *, production_key: str, delivery: bool = True) -> str:
    """Both clouds with a test and a production profile, all on the sandbox."""
    text = f"""
store_id = "S042"
till_id = "T03"
environment = "test"
port = {free_port()}
"""
    for env, key in (("test", "sandbox-engage-key"), ("production", production_key)):
        text += f"""
[destinations.engage.{env}]
base_url = "{url}"
api_key = "{key}"
[destinations.loaded.{env}]
base_url = "{url}/loaded"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
"""
    text += '[destinations.engage]\nkind = "engage"\n[destinations.loaded]\nkind = "loaded"\n'
    if not delivery:
        text += "[config.delivery]\nenabled = false\n"
    return text


@pytest.fixture
def install(invoke, tmp_path):
    def run(url: str, **kwargs) -> None:
        path = tmp_path / "answers.toml"
        path.write_text(two_environments(url, **kwargs))
        result = invoke("install", "--non-interactive", "--answers", str(path), "--offline")
        assert result.exit_code == 0, result.output

    return run


def profile(root, name: str = "engage") -> tuple[str, str]:
    table = tomllib.loads(steps.layout(root).config_file.read_text())["destinations"][name]
    return table["profile"], table["base_url"]


def test_switch_to_production_and_back_after_the_clouds_accept(
    root, host, invoke, install, sandbox
):
    install(sandbox.url, production_key="sandbox-engage-key")
    first = host.agent
    result = invoke("switch-environment", "production")
    assert result.exit_code == 0, result.output
    assert "ok    cloud engage" in result.output
    assert "Switched to production: engage, loaded; the agent restarted" in result.output
    assert profile(root) == ("production", sandbox.url)
    assert profile(root, "loaded") == ("production", sandbox.url + "/loaded")
    assert host.agent is not None
    assert host.agent is not first  # restarted on the new settings
    back = invoke("switch-environment", "test")
    assert back.exit_code == 0, back.output
    assert profile(root) == ("test", sandbox.url)


def test_a_wrong_production_key_switches_nothing(root, host, invoke, install, sandbox):
    install(sandbox.url, production_key="wrong-production-key")
    before = steps.layout(root).config_file.read_text()
    result = invoke("switch-environment", "production")
    assert result.exit_code == 1
    assert "FAIL  cloud engage" in result.output
    assert "credentials refused (HTTP 401 Unauthorized); check the secret" in result.output
    assert "the new settings do not work for cloud engage; the till stays as it was" in (
        result.output
    )
    assert steps.layout(root).config_file.read_text() == before
    assert "wrong-production-key" not in result.output


def test_a_cloud_without_the_profile_is_named_with_how_to_add_it(root, invoke, installed):
    result = invoke("switch-environment", "production")
    assert result.exit_code == 1
    assert "destinations.loaded: no production profile" in result.output
    assert "configure --set destinations.loaded.profiles.production.base_url=URL" in (result.output)
    assert profile(root) == ("test", "http://127.0.0.1:9/")


def test_items_waiting_block_a_switch_unless_forced(root, host, invoke, install, sandbox):
    install(sandbox.url, production_key="sandbox-engage-key", delivery=False)
    assert host.agent is not None
    till = Till(host.agent.url, host.agent.token)
    assert till.post("/v1/receipts", make_receipt()).status_code == 202
    till.close()
    refused = invoke("switch-environment", "production")
    assert refused.exit_code == 1
    assert "2 items wait to be delivered; they would go to the production clouds" in (
        refused.output
    )
    assert profile(root)[0] == "test"
    forced = invoke("switch-environment", "production", "--force")
    assert forced.exit_code == 0, forced.output
    assert profile(root)[0] == "production"


def test_configure_refuses_a_secret_the_cloud_refuses(root, invoke, install, sandbox):
    install(sandbox.url, production_key="sandbox-engage-key")
    secret = steps.layout(root).credentials_dir / "engage-test-api-key"
    result = invoke("configure", "--secret", "engage-test-api-key", input="a-wrong-key\n")
    assert result.exit_code == 1
    assert "credentials refused (HTTP 401 Unauthorized); check the secret" in result.output
    assert "nothing was changed" in result.output
    assert secret.read_text().strip() == "sandbox-engage-key"
    good = invoke("configure", "--secret", "engage-test-api-key", input="sandbox-engage-key\n")
    assert good.exit_code == 0, good.output
    assert "ok    cloud engage" in good.output
    assert "cloud loaded" not in good.output  # only the cloud whose secret changed is asked


def test_an_unknown_profile_is_one_problem_not_two(root, invoke, installed):
    result = invoke("configure", "--set", "destinations.engage.profile=staging")
    assert result.exit_code == 1
    assert "destinations.engage.profile: no [profiles.staging] table (known: test)" in (
        result.output
    )
    assert "unreadable" not in result.output
