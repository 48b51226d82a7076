"""What connectors keep between runs: OAuth tokens (sealed) and links to records they created."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from agent.core import crypto, db
from agent.core.errors import KeyStoreError
from agent.core.failpoints import failpoint

log = logging.getLogger(__name__)

FILE_NAME = "connectors.sqlite"
MIGRATIONS = (
    """
    CREATE TABLE tokens (
        destination TEXT PRIMARY KEY, sealed TEXT NOT NULL, saved_at REAL NOT NULL
    );
    CREATE TABLE links (
        destination TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        PRIMARY KEY (destination, kind, key)
    )
    """,
)


class ConnectorVault:
    """One SQLite file (WAL, synchronous=FULL): a token is replaced in one fsync'd commit.

    A refreshed token pair is committed before it is used, so a crash leaves either the old
    pair or the new one, never a torn file (see docs/connectors.md, "Tokens"). Tokens are
    sealed with the keyring (the destination bound in); the purge's key rotation re-seals
    them through sealed_count(), like every other store of sealed values.
    """

    durable = True

    def __init__(self, data_dir: Path, keyring: crypto.Keyring, busy_timeout_seconds: float = 5.0):
        self._keyring = keyring
        self._lock = threading.Lock()
        self.path = data_dir / FILE_NAME
        self._conn = db.connect(self.path, busy_timeout_seconds=busy_timeout_seconds)
        db.migrate(self._conn, MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- tokens --------------------------------------------------------------------------

    def load_token(self, destination: str) -> dict[str, Any] | None:
        """The token a destination saved last, or None (never saved, or no longer readable)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT sealed FROM tokens WHERE destination = ?", (destination,)
            ).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(self._keyring.open(row[0], _aad(destination)))
        except (KeyStoreError, ValueError) as exc:
            log.error("the saved token of %s cannot be read: %s", destination, exc)
            return None
        return value if isinstance(value, dict) else None

    def save_token(self, destination: str, token: dict[str, Any]) -> None:
        """Replace a destination's token in one durable commit (StorageError if it failed)."""
        sealed = self._keyring.seal(json.dumps(token).encode(), _aad(destination))
        with self._lock, db.transaction(self._conn):
            self._conn.execute(
                "INSERT INTO tokens VALUES (?, ?, julianday('now')) ON CONFLICT (destination) "
                "DO UPDATE SET sealed = excluded.sealed, saved_at = excluded.saved_at",
                (destination, sealed),
            )
            failpoint("vault.before_commit")
        failpoint("vault.after_commit")

    # -- links: records a connector created in the cloud ---------------------------------

    def links(self, destination: str, kind: str) -> dict[str, str]:
        """Every key of this kind the destination has created, with its fingerprint."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, fingerprint FROM links WHERE destination = ? AND kind = ?",
                (destination, kind),
            ).fetchall()
        return {str(key): str(fingerprint) for key, fingerprint in rows}

    def save_link(self, destination: str, kind: str, key: str, fingerprint: str) -> None:
        """Remember that key exists in the cloud as it was last written (its fingerprint)."""
        with self._lock, db.transaction(self._conn):
            self._conn.execute(
                "INSERT INTO links VALUES (?, ?, ?, ?) ON CONFLICT (destination, kind, key) "
                "DO UPDATE SET fingerprint = excluded.fingerprint",
                (destination, kind, key, fingerprint),
            )

    # -- what privacy asks of every store of sealed values -------------------------------

    def sealed_count(self, key_id: str) -> int:
        """Re-seal under the active key what key_id still seals; then none is left under it."""
        prefix = f"{crypto.SEAL_PREFIX}.{key_id}.%"
        with self._lock:
            rows = self._conn.execute(
                "SELECT destination, sealed FROM tokens WHERE sealed LIKE ?", (prefix,)
            ).fetchall()
        for destination, sealed in rows:
            aad = _aad(destination)
            fresh = self._keyring.seal(self._keyring.open(sealed, aad), aad)
            with self._lock, db.transaction(self._conn):
                self._conn.execute(
                    "UPDATE tokens SET sealed = ? WHERE destination = ?", (fresh, destination)
                )
        return 0

    def purge_expired(self, now: float) -> int:
        return 0  # a token lives as long as its destination; it holds no personal data

    def forget_person(self, *, email: str | None, mobile_phone: str | None) -> int:
        return 0

    def checkpoint(self) -> None:
        with self._lock:
            db.checkpoint(self._conn)


def _aad(destination: str) -> str:
    return crypto.record_aad("token", destination)
