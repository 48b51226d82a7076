"""The support bundle: everything support needs, and no personal value or secret in any byte."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.conftest import Till
from tests.test_cli import till_agent
from tests.test_privacy_scan import PLANTED, encodings, plant_everything


def test_the_bundle_has_status_logs_versions_and_store_checks_but_no_personal_data(
    agent_process, tmp_path
):
    process = agent_process({"destinations": {"engage": {"api_key_secret": "engage-api-key"}}})
    process.start()
    till = Till(process.url, process.token)
    plant_everything(till)
    till.close()
    out = tmp_path / "out"
    out.mkdir()
    result = till_agent(
        "support-bundle", "--config", str(process.config_path), "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    (bundle,) = out.glob("till-agent-support-store-test-till-test-*.zip")
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        contents = {name: archive.read(name) for name in names}
    assert {"config.toml", "status.json", "versions.json", "stores.json"} <= names
    assert any(name.startswith("logs/") for name in names)
    assert json.loads(contents["status.json"])["tillId"] == "till-test"
    assert json.loads(contents["stores.json"])["outbox.db"] == "ok"
    assert b"engage-api-key" not in contents["config.toml"]
    assert b'kind = "engage"' in contents["config.toml"]
    assert process.token.encode() not in b"".join(contents.values())
    for name, data in contents.items():
        leaks = [k for k, v in PLANTED.items() if any(f in data for f in encodings(v))]
        assert leaks == [], name


@pytest.mark.linux_only(
    "a graceful stop by SIGTERM (Windows has none; the service stops through the SCM)"
)
def test_a_bundle_of_a_stopped_agent_says_so(agent_process, tmp_path):
    process = agent_process()
    process.start()
    assert process.terminate() == 0
    result = till_agent(
        "support-bundle", "--config", str(process.config_path), "--output", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    (bundle,) = tmp_path.glob("*.zip")
    with zipfile.ZipFile(bundle) as archive:
        assert archive.read("status.json") == b"null\n"
