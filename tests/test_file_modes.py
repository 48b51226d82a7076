"""What the agent makes is owner-only whatever umask it starts with; a shared secret is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import Till, make_receipt
from tests.test_cli import till_agent

pytestmark = pytest.mark.linux_only("POSIX modes; on Windows the folders' DACLs (tests/wine)")


def open_to_others(*roots: Path) -> list[str]:
    """Every file or folder under roots (roots included) that group or others may use."""
    found = []
    for root in roots:
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077:
                found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return found


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_everything_the_agent_creates_is_owner_only_whatever_the_umask(
    agent_process, tmp_path, umask
):
    process = agent_process()
    process.start(umask=umask)
    till = Till(process.url, process.token)
    contact = {"firstName": "Zz", "email": "zz.modes@example.com"}
    assert till.post("/v1/contacts", contact).status_code == 202
    assert till.post("/v1/receipts", make_receipt("R-MODES")).status_code == 202
    till.close()
    data, logs = tmp_path / "data", tmp_path / "logs"
    assert (data / "outbox.db-wal").exists()  # checked while the stores are open
    assert list(logs.glob("till-agent-*.log"))
    running = open_to_others(data, logs, tmp_path / "pos-token")
    config = str(process.config_path)
    bundles, reports = tmp_path / "bundles", tmp_path / "reports"
    bundle = till_agent("support-bundle", "--config", config, "--output", str(bundles), umask=umask)
    assert bundle.returncode == 0, bundle.stderr
    report = till_agent(
        "qa-report", "--config", config, "--from", "2026-01-01",
        "--output", str(reports / "qa.md"), umask=umask,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert process.terminate() == 0
    assert list(bundles.glob("*.zip"))
    assert (reports / "qa.md").exists()
    assert running == []
    assert open_to_others(data, logs, tmp_path / "pos-token", bundles, reports) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
@pytest.mark.parametrize("secret", ["pos-token", "data/keyring.json"])
def test_a_token_or_key_file_others_can_read_is_refused_at_start_naming_the_fix(
    agent_process, tmp_path, secret, mode
):
    first = agent_process()
    first.start()
    assert first.terminate() == 0
    path = tmp_path / secret
    os.chmod(path, mode)
    result = till_agent("run", "--config", str(first.config_path), umask=0o022)
    assert result.returncode != 0
    assert str(path) in result.stderr
    assert f"mode {mode:04o}" in result.stderr
    assert f"chmod 600 {path}" in result.stderr
    os.chmod(path, 0o600)
    again = agent_process()
    again.start()  # fixed as it says, it starts
    assert again.terminate() == 0
