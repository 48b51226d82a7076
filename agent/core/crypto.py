"""The keyring: AES-GCM sealing of personal data (record id bound in) and keyed hashes."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.core.errors import KeyStoreError
from agent.core.filemodes import refusal, shared_with_others

log = logging.getLogger(__name__)

FORMAT = 1
SEAL_PREFIX = "s1"
NONCE_BYTES = 12
KEY_BYTES = 32


class KeyProtector(Protocol):
    """Wraps the key file's bytes with an OS secret store (DPAPI on Windows: service/windows.py)."""

    name: str

    def protect(self, data: bytes) -> bytes: ...

    def unprotect(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class DataKey:
    key_id: str
    created: str
    secret: bytes


class Keyring:
    """Data keys (the newest seals, any may open) and the separate key for keyed hashes."""

    def __init__(
        self,
        data_keys: list[DataKey],
        index_key: bytes,
        protector: KeyProtector | None = None,
    ) -> None:
        if not data_keys:
            raise KeyStoreError("the keyring holds no data key")
        self.protector = protector
        self._lock = threading.Lock()
        self._keys = {k.key_id: k for k in data_keys}
        self._active = data_keys[-1]
        self._index_key = index_key

    @property
    def active_key_id(self) -> str:
        return self._active.key_id

    @property
    def active_created(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self._active.created)

    def data_keys(self) -> list[DataKey]:
        """Oldest first; the last one seals."""
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: k.created)

    def add(self, key: DataKey) -> None:
        """A new data key that seals from now on (the older ones still open)."""
        with self._lock:
            self._keys[key.key_id] = key
            self._active = key

    def remove(self, key_id: str) -> None:
        """Forget a data key: whatever it sealed can no longer be opened, here or in any copy."""
        with self._lock:
            if key_id == self._active.key_id:
                raise KeyStoreError("the active data key cannot be destroyed")
            self._keys.pop(key_id, None)

    def seal(self, plaintext: bytes, record_id: str) -> str:
        """Encrypt with the active key; record_id is bound in as associated data."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self._active.secret).encrypt(nonce, plaintext, record_id.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{SEAL_PREFIX}.{self._active.key_id}.{body}"

    def seal_bytes(self, plaintext: bytes, record_id: str) -> bytes:
        """The compact binary form, for stores of millions of rows: key id, nonce, ciphertext."""
        key_id = self._active.key_id.encode()
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self._active.secret).encrypt(nonce, plaintext, record_id.encode())
        return bytes([len(key_id)]) + key_id + nonce + sealed

    def open_bytes(self, blob: bytes, record_id: str) -> bytes:
        key_id = blob[1 : 1 + blob[0]].decode()
        body = blob[1 + blob[0] :]
        with self._lock:
            key = self._keys.get(key_id)
        if key is None:
            raise KeyStoreError(f"sealed with key {key_id!r}, which this keyring does not hold")
        try:
            return AESGCM(key.secret).decrypt(
                body[:NONCE_BYTES], body[NONCE_BYTES:], record_id.encode()
            )
        except InvalidTag as exc:
            raise KeyStoreError(f"sealed value for {record_id} does not authenticate") from exc

    def blind(self, data: bytes) -> bytes:
        """A 128-bit blind index: enough to find a row, and it opens nothing."""
        return hmac.digest(self._index_key, data, "sha256")[:16]

    def open(self, token: str, record_id: str) -> bytes:
        """Decrypt a sealed value; KeyStoreError if its key is gone or it does not authenticate."""
        prefix, key_id, body = _split_token(token)
        with self._lock:
            key = self._keys.get(key_id)
        if prefix != SEAL_PREFIX or key is None:
            raise KeyStoreError(f"sealed with key {key_id!r}, which this keyring does not hold")
        raw = base64.urlsafe_b64decode(body)
        try:
            return AESGCM(key.secret).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], record_id.encode()
            )
        except InvalidTag as exc:
            raise KeyStoreError(f"sealed value for {record_id} does not authenticate") from exc

    @property
    def index_key(self) -> bytes:
        return self._index_key

    def fingerprint(self, value: str) -> str:
        """A short keyed hash of a match key for logs: one person, one mark, nothing readable."""
        return "fp_" + self.keyed_hash(value.encode())[:12]

    def keyed_hash(self, data: bytes) -> str:
        """HMAC-SHA256 under the index key: a blind index or a content hash, never reversible."""
        return hmac.new(self._index_key, data, hashlib.sha256).hexdigest()


def record_aad(kind: str, key: str) -> str:
    """The associated data a sealed value is bound to: a copy moved to another record won't open."""
    return f"{kind}:{key}"


def excerpt_aad(destination: str, key: str, revision: int) -> str:
    """What a dead letter's sealed cloud excerpt is bound to: its destination, record, revision."""
    return record_aad("excerpt", f"{destination}/{key}/{revision}")


def is_sealed(value: str) -> bool:
    """A sealed token (s1.<key id>.<body>), not text kept in clear."""
    return value.startswith(SEAL_PREFIX + ".") and value.count(".") >= 2


def key_id_of(token: str) -> str:
    """Which data key sealed a value."""
    return _split_token(token)[1]


def _split_token(token: str) -> tuple[str, str, str]:
    parts = token.split(".", 2)
    if len(parts) != 3:
        raise KeyStoreError("not a sealed value")
    return parts[0], parts[1], parts[2]


def load_or_create(
    path: Path, *, may_create: bool, protector: KeyProtector | None = None
) -> Keyring:
    """Load the key file; create it (owner-only) when may_create and it does not exist yet."""
    if not path.exists():
        if not may_create:
            raise KeyStoreError(
                f"key file {path} is missing but the data directory holds sealed data; "
                "restore the key file or erase the data directory"
            )
        write_keyring_file(path, _wrap(_new_keyring_document(), protector))
        log.info("created key file %s", path)
    shared = shared_with_others(path)
    if shared is not None:
        raise KeyStoreError(refusal("key file", path, shared))
    return _parse(path, _unwrap(path, _read(path), protector), protector)


def examine(path: Path) -> str:
    """What the key file holds, checked as far as this account can; KeyStoreError if damaged.

    A plain keyring is read in full. One wrapped by an OS secret store (DPAPI) opens only for
    the account that wrapped it, the service's, so here its wrapping is checked instead: a
    technician's prompt is another account (the running agent proves the rest)."""
    document = _read(path)
    wrapped_by = document.get("protected_by")
    if wrapped_by is None:
        return f"{len(_parse(path, document, None).data_keys())} data keys, not wrapped"
    try:
        blob = _b64(document["blob"])
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise KeyStoreError(f"key file {path} is corrupt: {exc}") from exc
    if not blob:
        raise KeyStoreError(f"key file {path} is corrupt: its {wrapped_by} blob is empty")
    return f"wrapped by {wrapped_by} for the service's account ({len(blob)} bytes)"


def _read(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyStoreError(f"key file {path} is unreadable or corrupt: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeyStoreError(f"key file {path} is not a till-agent keyring (format {FORMAT})")
    return document


def _wrap(document: dict[str, Any], protector: KeyProtector | None) -> dict[str, Any]:
    """The document as written: plain (owner-only file) or its bytes wrapped by the protector."""
    if protector is None:
        return document
    blob = protector.protect(json.dumps(document).encode())
    return {
        "format": FORMAT,
        "protected_by": protector.name,
        "blob": base64.b64encode(blob).decode(),
    }


def _unwrap(path: Path, document: dict[str, Any], protector: KeyProtector | None) -> dict[str, Any]:
    wrapped_by = document.get("protected_by")
    if wrapped_by is None:
        return document
    if protector is None or protector.name != wrapped_by:
        raise KeyStoreError(
            f"key file {path} is protected by {wrapped_by}: only the account that created it "
            "(the service's) can open it; start the service and run the command again (it "
            "then goes through the running agent)"
        )
    try:
        inner: dict[str, Any] = json.loads(protector.unprotect(_b64(document["blob"])))
    except (KeyError, ValueError, binascii.Error, OSError) as exc:
        raise KeyStoreError(f"key file {path} cannot be unprotected: {exc}") from exc
    return inner


def _parse(path: Path, document: dict[str, Any], protector: KeyProtector | None) -> Keyring:
    try:
        keys = [
            DataKey(k["id"], k["created"], _b64(k["key"]))
            for k in sorted(document["data_keys"], key=lambda k: k["created"])
        ]
        index_key = _b64(document["index_key"])
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise KeyStoreError(f"key file {path} is corrupt: {exc}") from exc
    if any(len(k.secret) != KEY_BYTES for k in keys) or len(index_key) != KEY_BYTES:
        raise KeyStoreError(f"key file {path} is corrupt: a key has the wrong length")
    return Keyring(keys, index_key, protector)


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _new_keyring_document() -> dict[str, Any]:
    return {
        "format": FORMAT,
        "index_key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode(),
        "data_keys": [new_data_key_entry()],
    }


def new_data_key_entry(now: dt.datetime | None = None) -> dict[str, str]:
    now = now or dt.datetime.now(dt.UTC)
    return {
        "id": f"k{now:%Y%m%d%H%M%S}{secrets.token_hex(2)}",
        "created": now.isoformat(),
        "key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode(),
    }


def new_data_key(now: dt.datetime) -> DataKey:
    entry = new_data_key_entry(now)
    return DataKey(entry["id"], entry["created"], _b64(entry["key"]))


def save(path: Path, keyring: Keyring) -> None:
    """Write the keyring's current keys to its file (atomically, owner-only)."""
    document = {
        "format": FORMAT,
        "index_key": base64.b64encode(keyring.index_key).decode(),
        "data_keys": [
            {"id": k.key_id, "created": k.created, "key": base64.b64encode(k.secret).decode()}
            for k in keyring.data_keys()
        ],
    }
    write_keyring_file(path, _wrap(document, keyring.protector))


def write_keyring_file(path: Path, document: dict[str, Any]) -> None:
    """Write atomically: an owner-only temporary file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(document, indent=1).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return  # Windows cannot open a directory for fsync; NTFS journals the rename.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
