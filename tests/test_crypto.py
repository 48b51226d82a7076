"""The keyring: sealing binds the record id, the key file is owner-only and checked."""

from __future__ import annotations

import json
import stat

import pytest

from agent.core import crypto
from agent.core.errors import KeyStoreError


def test_seal_and_open_round_trip(tmp_path):
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    token = keyring.seal("Zyxqvörn".encode(), "contact:loc_1")
    assert "Zyxqv" not in token
    assert keyring.open(token, "contact:loc_1").decode() == "Zyxqvörn"


def test_a_sealed_value_moved_to_another_record_does_not_open(tmp_path):
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    token = keyring.seal(b"x", "receipt:R-1")
    with pytest.raises(KeyStoreError, match="does not authenticate"):
        keyring.open(token, "receipt:R-2")


@pytest.mark.linux_only("POSIX modes; on Windows the data folder's DACL guards it (tests/wine)")
def test_key_file_is_owner_only_and_reloads_the_same_keys(tmp_path):
    path = tmp_path / "keys" / "keyring.json"
    first = crypto.load_or_create(path, may_create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = first.seal(b"v", "r")
    again = crypto.load_or_create(path, may_create=False)
    assert again.open(token, "r") == b"v"
    assert again.keyed_hash(b"a") == first.keyed_hash(b"a")


def test_missing_key_file_with_data_present_is_refused(tmp_path):
    with pytest.raises(KeyStoreError, match="missing"):
        crypto.load_or_create(tmp_path / "keyring.json", may_create=False)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        json.dumps({"format": 1}),
        json.dumps({"format": 1, "index_key": "AA==", "data_keys": []}),
    ],
)
def test_corrupt_key_file_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "keyring.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(KeyStoreError, match=r"key file|no data key"):
        crypto.load_or_create(path, may_create=False)


def test_value_sealed_with_a_destroyed_key_cannot_be_read(tmp_path):
    keyring = crypto.load_or_create(tmp_path / "a.json", may_create=True)
    other = crypto.load_or_create(tmp_path / "b.json", may_create=True)
    with pytest.raises(KeyStoreError, match="does not hold"):
        other.open(keyring.seal(b"x", "r"), "r")


def test_agent_refuses_to_start_when_the_key_file_is_lost(start_agent):
    agent, till = start_agent()
    key_file = agent.settings.privacy.key_file
    till.close()
    agent.stop()
    key_file.unlink()
    with pytest.raises(KeyStoreError, match="missing"):
        start_agent()


def test_fingerprint_is_short_stable_and_keyed(tmp_path):
    first = crypto.load_or_create(tmp_path / "a.json", may_create=True)
    other = crypto.load_or_create(tmp_path / "b.json", may_create=True)
    value = "+46700009173"
    assert first.fingerprint(value) == first.fingerprint(value)
    assert first.fingerprint(value) != other.fingerprint(value)
    assert len(first.fingerprint(value)) == 15
    assert "9173" not in first.fingerprint(value)


class XorProtector:
    """A stand-in for DPAPI at the OS boundary: reversible, and visibly not the plain file."""

    name = "xor-test"

    def protect(self, data: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in data)

    def unprotect(self, data: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in data)


def test_a_protected_key_file_holds_no_key_in_the_clear(tmp_path):
    path = tmp_path / "keyring.json"
    keyring = crypto.load_or_create(path, may_create=True, protector=XorProtector())
    document = json.loads(path.read_text(encoding="utf-8"))
    assert set(document) == {"format", "protected_by", "blob"}
    token = keyring.seal(b"v", "r")
    keyring.add(crypto.new_data_key(keyring.active_created))
    crypto.save(path, keyring)  # a rotation keeps the protection
    again = crypto.load_or_create(path, may_create=False, protector=XorProtector())
    assert again.open(token, "r") == b"v"


def test_a_protected_key_file_without_its_protector_is_refused_clearly(tmp_path):
    path = tmp_path / "keyring.json"
    crypto.load_or_create(path, may_create=True, protector=XorProtector())
    with pytest.raises(KeyStoreError, match="protected by xor-test"):
        crypto.load_or_create(path, may_create=False)


def test_examine_reads_a_plain_key_file_in_full_and_a_wrapped_one_as_far_as_it_can(tmp_path):
    plain, wrapped = tmp_path / "plain.json", tmp_path / "wrapped.json"
    crypto.load_or_create(plain, may_create=True)
    crypto.load_or_create(wrapped, may_create=True, protector=XorProtector())
    assert crypto.examine(plain) == "1 data keys, not wrapped"
    assert crypto.examine(wrapped).startswith("wrapped by xor-test for the service's account")
    document = json.loads(wrapped.read_text(encoding="utf-8"))
    for damaged in ("", "not base64!"):
        wrapped.write_text(json.dumps({**document, "blob": damaged}), encoding="utf-8")
        with pytest.raises(KeyStoreError, match="corrupt"):
            crypto.examine(wrapped)
