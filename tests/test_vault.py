"""The connectors' vault: tokens sealed, replaced in one durable commit, re-sealed on rotation."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.connectors.vault import FILE_NAME, ConnectorVault
from agent.core import crypto, failpoints
from tests.conftest import ROOT

TOKEN = {"access_token": "acc-0123456789", "refresh_token": "ref-0123456789", "expires_at": 1.0}


@pytest.fixture
def keyring(tmp_path: Path) -> crypto.Keyring:
    return crypto.load_or_create(tmp_path / "keyring.json", may_create=True)


def test_a_token_is_kept_sealed_and_read_back(tmp_path: Path, keyring):
    vault = ConnectorVault(tmp_path, keyring)
    vault.save_token("loaded", TOKEN)
    vault.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob(f"{FILE_NAME}*"))
    assert b"ref-0123456789" not in raw
    assert b"acc-0123456789" not in raw
    again = ConnectorVault(tmp_path, keyring)
    assert again.load_token("loaded") == TOKEN
    assert again.load_token("other") is None
    again.close()


def test_a_rotated_key_re_seals_the_token_before_the_old_key_goes(tmp_path: Path, keyring):
    vault = ConnectorVault(tmp_path, keyring)
    vault.save_token("lightspeed", TOKEN)
    old = keyring.active_key_id
    keyring.add(crypto.new_data_key(dt.datetime.now(dt.UTC)))
    assert vault.sealed_count(old) == 0  # privacy destroys a key only when this says 0
    keyring.remove(old)
    assert vault.load_token("lightspeed") == TOKEN
    vault.close()


def test_links_are_remembered_across_a_restart(tmp_path: Path, keyring):
    vault = ConnectorVault(tmp_path, keyring)
    vault.save_link("loaded", "items", "SKU-1", "f1")
    vault.save_link("loaded", "items", "SKU-1", "f2")
    vault.close()
    again = ConnectorVault(tmp_path, keyring)
    assert again.links("loaded", "items") == {"SKU-1": "f2"}
    assert again.links("loaded", "categories") == {}
    again.close()


SAVE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from agent.core import crypto\n"
    "from agent.connectors.vault import ConnectorVault\n"
    "d = Path(sys.argv[1])\n"
    "v = ConnectorVault(d, crypto.load_or_create(d / 'keyring.json', may_create=True))\n"
    "v.save_token('lightspeed', {'refresh_token': sys.argv[2]})\n"
    "print('saved', flush=True)\n"
)


def save_in_child(
    data_dir: Path, value: str, point: str = ""
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, failpoints.ENV: point}
    return subprocess.run(
        [sys.executable, "-c", SAVE, str(data_dir), value],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("point", "survivor"), [("vault.before_commit", "old"), ("vault.after_commit", "new")]
)
def test_sigkill_while_saving_leaves_a_whole_token_old_or_new(tmp_path: Path, point, survivor):
    assert save_in_child(tmp_path, "old").returncode == 0
    killed = save_in_child(tmp_path, "new", point)
    assert killed.returncode == -signal.SIGKILL
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=False)
    vault = ConnectorVault(tmp_path, keyring)
    assert vault.load_token("lightspeed") == {"refresh_token": survivor}
    vault.close()
