"""configure, upgrade and uninstall on an installed temporary root, with a real queue."""

from __future__ import annotations

import os
import sqlite3
import tomllib

import pytest

from agent import app
from installer import steps
from tests.conftest import Till, make_receipt

RECEIPTS = 7


def queue(root):
    return steps.waiting(steps.load_settings(steps.layout(root)))


def post_receipts(host, root, count=RECEIPTS):
    """Receipts over HTTP to the running agent; each goes to engage and to loaded."""
    assert host.agent is not None
    token = steps.layout(root).token_file.read_text().strip()
    till = Till(host.agent.url, token)
    try:
        for n in range(count):
            answer = till.post("/v1/receipts", make_receipt(f"R-{n:04d}"))
            assert answer.status_code == 202, answer.text
    finally:
        till.close()


def test_upgrade_keeps_every_queued_item(root, host, invoke, installed):
    post_receipts(host, root)
    result = invoke("upgrade")
    assert result.exit_code == 0, result.output
    assert f"{2 * RECEIPTS} items waiting to be delivered are kept" in result.output
    assert host.agent is not None  # started again
    host.stop()
    assert queue(root) == {"engage": RECEIPTS, "loaded": RECEIPTS}
    backup = steps.layout(root).data_dir / "outbox.db.pre-upgrade"
    assert backup.exists()
    if os.name == "posix":  # on Windows the data folder's DACL guards it (tests/wine)
        assert backup.stat().st_mode & 0o077 == 0


def test_failed_migration_puts_the_stores_back(root, host, invoke, installed, tmp_path):
    host.failing = {"migrate"}  # the new wheel's migration exits 1
    wheel = tmp_path / "till_agent-9.9.9-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    post_receipts(host, root)
    result = invoke("upgrade", "--wheel", str(wheel))
    assert result.exit_code == 1
    assert "stores are back as they were" in result.output
    assert host.agent is None  # left stopped: the new code would fail the same way
    assert host.commands_named("pip")  # the wheel went in before the migration failed
    assert queue(root) == {"engage": RECEIPTS, "loaded": RECEIPTS}


def test_upgrade_stores_restores_a_store_a_migration_broke(root, host, installed):
    post_receipts(host, root)
    host.stop()
    settings = steps.load_settings(steps.layout(root))
    outbox = settings.agent.data_dir / "outbox.db"

    def broken_migration():
        conn = sqlite3.connect(outbox)
        try:
            conn.execute("DROP TABLE IF EXISTS ack_queue_engage")
            conn.commit()
        finally:
            conn.close()
        raise sqlite3.OperationalError("migration step 7 failed")

    with pytest.raises(sqlite3.OperationalError):
        steps.upgrade_stores(settings, broken_migration)
    assert steps.waiting(settings) == {"engage": RECEIPTS, "loaded": RECEIPTS}


def test_uninstall_refuses_while_items_wait(root, host, invoke, installed):
    post_receipts(host, root, count=2)
    result = invoke("uninstall")
    assert result.exit_code == 1
    assert "items not delivered yet (engage 2, loaded 2)" in result.output
    assert host.agent is not None  # running again, to send them
    assert steps.layout(root).config_file.exists()


def test_uninstall_force_purge_erases_everything(root, host, invoke, installed):
    post_receipts(host, root, count=2)
    where = steps.layout(root)
    result = invoke("uninstall", "--force", "--purge-data")
    assert result.exit_code == 0, result.output
    assert host.agent is None
    for gone in (where.config_file, where.credentials_dir, where.data_dir, where.log_dir):
        assert not gone.exists(), gone
    if os.name == "posix":
        assert not (where.unit_dir / "till-agent.service").exists()
        assert ["systemctl", "disable", "--now", "till-agent.service"] in host.calls
    else:
        assert ["sc.exe", "delete", "TillAgent"] in host.calls
        assert host.image_path is None


def test_uninstall_with_an_empty_queue_keeps_the_data(root, host, invoke, installed):
    result = invoke("uninstall")
    assert result.exit_code == 0, result.output
    where = steps.layout(root)
    assert not where.config_file.exists()
    assert (where.data_dir / "outbox.db").exists()
    again = invoke("uninstall")  # idempotent
    assert again.exit_code == 0, again.output


@pytest.mark.linux_only(
    "reading an unlinked file through a handle still open (Windows refuses the unlink)"
)
def test_erase_file_overwrites_before_unlinking(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"x" * 100_000)
    with path.open("rb") as still_open:  # the same inode, read after the erase
        steps.erase_file(path)
        assert still_open.read() == b"\0" * 100_000
    assert not path.exists()


def test_configure_switches_profile_without_touching_the_queue(root, host, invoke, answers_file):
    path = answers_file(production=True)
    installed = invoke("install", "--non-interactive", "--answers", str(path), "--offline")
    assert installed.exit_code == 0, installed.output
    post_receipts(host, root, count=3)
    # --offline added deliberately (issue 19): configure now probes a changed cloud's new
    # credentials, and this till's clouds are a closed port; test_environments.py covers that.
    result = invoke("configure", "--offline", "--set", "destinations.engage.profile=production")
    assert result.exit_code == 0, result.output
    assert "the agent restarted" in result.output
    raw = tomllib.loads(steps.layout(root).config_file.read_text())
    assert raw["destinations"]["engage"]["profile"] == "production"
    host.stop()
    assert queue(root) == {"engage": 3, "loaded": 3}


def test_configure_refuses_an_invalid_change_and_keeps_the_file(root, invoke, installed):
    before = steps.layout(root).config_file.read_text()
    result = invoke("configure", "--set", "destinations.engage.profile=staging")
    assert result.exit_code == 1
    assert "no [profiles.staging] table" in result.output
    bad_port = invoke("configure", "--set", "api.listen=0.0.0.0:80")
    assert "must be a loopback address" in bad_port.output
    assert steps.layout(root).config_file.read_text() == before


def test_configure_replaces_a_secret(root, host, invoke, installed):
    result = invoke(  # --offline: as above
        "configure", "--offline", "--secret", "engage-test-api-key", input="new-engage-key\n"
    )
    assert result.exit_code == 0, result.output
    assert "new-engage-key" not in result.output
    secret = steps.layout(root).credentials_dir / "engage-test-api-key"
    assert secret.read_text().strip() == "new-engage-key"
    if os.name == "posix":  # on Windows the credentials folder's DACL guards it (tests/wine)
        assert secret.stat().st_mode & 0o077 == 0


def test_configure_takes_typed_values(root, invoke, installed):
    result = invoke("configure", "--set", "delivery.enabled=false", "--no-restart")
    assert result.exit_code == 0, result.output
    raw = tomllib.loads(steps.layout(root).config_file.read_text())
    assert raw["delivery"]["enabled"] is False


def test_waiting_counts_items_set_aside_after_failures(start_agent):
    agent, till = start_agent()  # delivery off: nothing moves but what the test moves
    for n in range(3):
        assert till.post("/v1/receipts", make_receipt(f"R-{n}")).status_code == 202
    claimed = agent.outbox.claim("engage", timeout_seconds=0)
    assert claimed is not None
    agent.outbox.set_aside(claimed)  # what dispatch does to an item that keeps failing
    settings = agent.settings
    till.close()
    agent.stop()
    assert app.undelivered(settings)["engage"] == 3  # two ready, one set aside
    assert steps.waiting(settings)["engage"] == 3


def test_uninstall_check_asks_the_running_agent_and_changes_nothing(root, host, invoke, installed):
    """What the MSI runs before it removes anything (docs/install.md, "Remove")."""
    clear = invoke("uninstall", "--check")
    assert clear.exit_code == 0, clear.output
    assert "Nothing waits to be delivered" in clear.output
    post_receipts(host, root, count=2)
    refused = invoke("uninstall", "--check")
    assert refused.exit_code == 1
    assert "items not delivered yet (engage 2, loaded 2); nothing was removed" in refused.output
    assert host.agent is not None  # never stopped
    assert steps.layout(root).config_file.exists()
    assert not [c for c in host.calls if "stop" in c or "disable" in c]


def test_uninstall_check_leaves_what_it_cannot_read_to_the_removal(invoke):
    result = invoke("uninstall", "--check")  # nothing installed under this root
    assert result.exit_code == 0, result.output
    assert "Cannot tell from here what waits" in result.output
