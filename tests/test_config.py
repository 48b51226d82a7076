"""Settings: loading, OS defaults, and validate() reporting every problem at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.connectors import KINDS
from agent.core import config, paths
from agent.core.config import CloudKind
from agent.core.errors import ConfigError
from tests.conftest import base_config, merged, write_toml


def test_load_reads_a_complete_file(tmp_path):
    path = write_toml(tmp_path / "config.toml", base_config(tmp_path, 8765))
    settings = config.load(path, {}, KINDS)
    assert settings.agent.store_id == "store-test"
    assert settings.api.listen == "127.0.0.1:8765"
    assert [d.name for d in settings.destinations] == ["engage", "loaded"]
    assert settings.privacy.key_file == tmp_path / "data" / "keyring.json"


@pytest.mark.linux_only("the Linux default paths")
def test_defaults_fill_what_the_file_leaves_out(tmp_path):
    raw = {"agent": {"store_id": "s", "till_id": "t"}}
    settings = config.from_mapping(raw, {}, KINDS)
    assert settings.api.listen == "127.0.0.1:8765"
    assert settings.api.max_body_bytes == 1_048_576
    assert settings.agent.data_dir == Path("/var/lib/till-agent")
    assert settings.api.token_file == Path("/etc/till-agent/credentials/pos-token")


@pytest.mark.linux_only("systemd's directory variables")
def test_systemd_directories_are_honoured():
    environ = {
        "STATE_DIRECTORY": "/var/lib/till-agent-x",
        "CONFIGURATION_DIRECTORY": "/etc/x",
        "CREDENTIALS_DIRECTORY": "/run/credentials/till-agent.service",
        "LOGS_DIRECTORY": "/var/log/x",
    }
    settings = config.from_mapping({"agent": {"store_id": "s", "till_id": "t"}}, environ, KINDS)
    assert settings.agent.data_dir == Path("/var/lib/till-agent-x")
    assert settings.agent.log_dir == Path("/var/log/x")
    assert settings.api.token_file == Path("/run/credentials/till-agent.service/pos-token")
    assert config.config_path(None, environ) == Path("/etc/x/config.toml")


def test_windows_locations_are_under_programdata():
    system = paths.system_paths({}, platform="win32")
    assert system.data_dir.parent == system.config_dir
    assert system.config_file.name == "config.toml"


def test_config_path_prefers_flag_then_environment(tmp_path):
    environ = {config.CONFIG_ENV: str(tmp_path / "env.toml")}
    assert config.config_path("given.toml", environ) == Path("given.toml")
    assert config.config_path(None, environ) == tmp_path / "env.toml"


def test_validate_reports_every_problem_at_once(tmp_path):
    raw = merged(
        base_config(tmp_path),
        {
            "agent": {"store_id": "", "log_level": "LOUD", "colour": "blue"},
            "api": {"listen": "0.0.0.0:8765", "threads": 0},
            "storage": {"max_size_mb": "big"},
            "privacy": {"contact_ttl_days": -1},
            "destinations": {"crm": {"kind": "salesforce", "base_url": "ftp://x"}},
            "extras": {},
        },
    )
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(raw, {}, KINDS)
    problems = "\n".join(caught.value.problems)
    for expected in (
        "extras: unknown section",
        "agent.colour: unknown key",
        "agent.store_id: required",
        "agent.log_level",
        "api.listen: must be a loopback address",
        "api.threads: must be positive",
        "storage.max_size_mb: expected an integer",
        "privacy.contact_ttl_days: must be positive",
        "destinations.crm.kind: required, one of",
        "destinations.crm.base_url",
    ):
        assert expected in problems
    assert len(caught.value.problems) == 10


def test_unknown_destination_kind_is_a_config_error(tmp_path):
    raw = merged(
        base_config(tmp_path), {"destinations": {"x": {"kind": "fax", "base_url": "http://a"}}}
    )
    with pytest.raises(ConfigError, match=r"destinations\.x\.kind"):
        config.from_mapping(raw, {}, KINDS)


def test_destination_takes_defaults_by_kind_and_can_be_set(tmp_path):
    raw = merged(
        base_config(tmp_path),
        {
            "destinations": {
                "hook": {"kind": "webhook", "base_url": "http://a", "takes": ["contacts"]}
            }
        },
    )
    settings = config.from_mapping(raw, {}, KINDS)
    takes = {d.name: d.takes for d in settings.destinations}
    assert takes["engage"] == {"receipts_with_contact", "contacts"}
    assert takes["loaded"] == {"receipts"}
    assert takes["hook"] == {"contacts"}


def test_a_kinds_facts_come_from_the_kind_handed_in_not_from_config(tmp_path):
    acme = CloudKind(
        name="acme",
        takes=frozenset({"contacts"}),
        amends="difference",
        requests_per_second=2.5,
        rate_window_seconds=60.0,
        contact_source=True,
    )
    raw = merged(base_config(tmp_path), {"contacts": {"source": "a"}})
    raw["destinations"] = {"a": {"kind": "acme", "base_url": "http://a"}}
    (a,) = config.from_mapping(raw, {}, {"acme": acme}).destinations
    assert a.takes == {"contacts"}
    assert a.amends == "difference"
    assert (a.requests_per_second, a.rate_window_seconds) == (2.5, 60.0)
    with pytest.raises(ConfigError, match=r"kind: required, one of acme \(got 'engage'\)"):
        config.from_mapping(base_config(tmp_path), {}, {"acme": acme})
    not_a_source = dataclasses.replace(acme, contact_source=False)
    with pytest.raises(ConfigError, match="a acme cannot be a source"):
        config.from_mapping(raw, {}, {"acme": not_a_source})


def test_each_kind_brings_its_documented_rate_and_how_it_amends(tmp_path):
    lightspeed = {"kind": "lightspeed", "base_url": "http://ls"}
    raw = merged(base_config(tmp_path), {"destinations": {"ls": lightspeed}})
    found = {d.kind: d for d in config.from_mapping(raw, {}, KINDS).destinations}
    assert found["engage"].requests_per_second == 40.0
    assert found["engage"].amends == "difference"
    assert found["loaded"].amends == "replace"
    assert found["lightspeed"].takes == frozenset()
    assert found["lightspeed"].requests_per_second * found["lightspeed"].rate_window_seconds == (
        pytest.approx(350)
    )


def test_destination_options_are_kept_for_the_connector(tmp_path):
    raw = merged(base_config(tmp_path), {"destinations": {"engage": {"api_key_secret": "k"}}})
    engage = config.from_mapping(raw, {}, KINDS).destinations[0]
    assert engage.options["api_key_secret"] == "k"


def test_missing_file_and_bad_toml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "none.toml", {}, KINDS)
    (tmp_path / "bad.toml").write_text("[agent\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "bad.toml", {}, KINDS)


@pytest.mark.parametrize(
    ("listen", "ok"),
    [("127.0.0.1:8765", True), ("[::1]:1", True), ("localhost:80", True), ("10.0.0.1:80", False)],
)
def test_listen_must_be_loopback(listen, ok):
    host, _ = config.parse_listen(listen)
    assert config.is_loopback(host) is ok
