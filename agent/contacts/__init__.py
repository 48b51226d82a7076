"""The local contact cache: sealed contacts found by blind indexes of their phone, email, number.

This package keeps the loyalty contacts on the till: this module is the cache; sync.py fills it
from a source's delta feed (sync_progress.py says how far the first download is); lookup.py
answers the POS from the cache, then the members registered here, then one live call.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec

from agent.core import crypto, db, models
from agent.core.errors import StorageError
from agent.core.matchkeys import normalise_email, normalise_phone

log = logging.getLogger(__name__)

FILE_NAME = "contacts.db"
SCHEMA = [
    """
    CREATE TABLE contacts (
        id INTEGER PRIMARY KEY,
        contact_id TEXT NOT NULL UNIQUE,
        sealed BLOB NOT NULL,
        verified_at REAL NOT NULL,
        email_key BLOB,
        phone_key BLOB,
        member_key BLOB
    );
    CREATE INDEX contacts_by_email ON contacts (email_key) WHERE email_key IS NOT NULL;
    CREATE INDEX contacts_by_phone ON contacts (phone_key) WHERE phone_key IS NOT NULL;
    CREATE INDEX contacts_by_member ON contacts (member_key) WHERE member_key IS NOT NULL;
    CREATE INDEX contacts_by_verified ON contacts (verified_at);
    CREATE TABLE sync_cursors (
        source TEXT PRIMARY KEY,
        cursor TEXT,
        synced_at REAL NOT NULL
    )
    """,
    # When a sync last reached the end of the source's feed; NULL: the first download from
    # that source has not finished yet (lookups say the cache is still loading).
    "ALTER TABLE sync_cursors ADD COLUMN drained_at REAL",
    # A source's second number (Lightspeed's `phone` beside `mobile`): found by either.
    """
    ALTER TABLE contacts ADD COLUMN phone2_key BLOB;
    CREATE INDEX contacts_by_phone2 ON contacts (phone2_key) WHERE phone2_key IS NOT NULL
    """,
]
KEY_COLUMNS = {"email": "email_key", "phone": "phone_key", "member": "member_key"}
# The indexes a bulk load leaves out and builds at its end (as in SCHEMA; IF NOT EXISTS, so
# opening the file builds any a crash mid-load left missing).
LOOKUP_INDEXES = {
    "contacts_by_email": "contacts (email_key) WHERE email_key IS NOT NULL",
    "contacts_by_phone": "contacts (phone_key) WHERE phone_key IS NOT NULL",
    "contacts_by_phone2": "contacts (phone2_key) WHERE phone2_key IS NOT NULL",
    "contacts_by_member": "contacts (member_key) WHERE member_key IS NOT NULL",
    "contacts_by_verified": "contacts (verified_at)",
}
UPSERT = (
    "INSERT INTO contacts (contact_id, sealed, verified_at, email_key, phone_key, member_key, "
    "phone2_key) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (contact_id) DO UPDATE SET "
    "sealed = excluded.sealed, verified_at = excluded.verified_at, "
    "email_key = excluded.email_key, phone_key = excluded.phone_key, "
    "member_key = excluded.member_key, phone2_key = excluded.phone2_key"
)
T = TypeVar("T")
# The initial download loads without the lookup indexes (bulk_load), so only the contact id's
# index takes random inserts; a bigger cache bought nothing there and cost RSS (P4: a build
# sorts in memory up to the cache size, and spills to disk past it).
WRITE_CACHE_KIB = 16 * 1024
WAL_CHECKPOINT_PAGES = 10_000  # ~40 MB of WAL at most between checkpoints


def latest_changes(pages: list[models.ContactPage]) -> dict[str, models.SourceContact]:
    """Each id's last change in feed order (a dict keeps the last value given for a key)."""
    return {c.contact_id: c for page in pages for c in page.contacts}


@dataclass(frozen=True)
class CachedContact:
    """A contact as the cache answers: its fields, and when the cloud last vouched for it."""

    contact: models.SourceContact
    verified_at: float


class ContactCache:
    """One SQLite file; personal fields sealed with the contact id bound in; keys blind."""

    def __init__(
        self,
        directory: Path,
        keyring: crypto.Keyring,
        *,
        default_region: str,
        ttl_days: float = 30.0,
        busy_timeout_seconds: float = 5.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.path = directory / FILE_NAME
        self._keyring = keyring
        self._region = default_region
        self._ttl_seconds = ttl_days * 86400.0
        self._now = now
        # A replica of the cloud's contacts: a page lost to a power cut is fetched again (its
        # cursor went with it), so commits need not wait for the disk (docs/decisions/0006).
        self._conn = db.connect(self.path, busy_timeout_seconds=busy_timeout_seconds, durable=False)
        self._conn.execute(f"PRAGMA cache_size=-{WRITE_CACHE_KIB}")
        # ...and fewer, larger checkpoints: an index page changed by many pages is written once.
        self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self._lock = threading.Lock()
        with self._lock:
            db.migrate(self._conn, SCHEMA)
        self._write(self._build_indexes)
        # Lookups read on their own connection: a sync writing a page never holds up a sale.
        self._reader = db.connect(
            self.path, busy_timeout_seconds=busy_timeout_seconds, durable=False
        )
        self._read_lock = threading.Lock()

    # -- keys ----------------------------------------------------------------------------

    def blind(self, kind: str, value: str | None) -> bytes | None:
        """The blind index of a normalised key, or None when the value is not a valid key."""
        normalised = self.normalise(kind, value) if value else None
        if normalised is None:
            return None
        return self._keyring.blind(f"{kind}:{normalised}".encode())

    def normalise(self, kind: str, value: str) -> str | None:
        if kind == "phone":
            return normalise_phone(value, self._region)
        if kind == "email":
            return normalise_email(value)
        return value.strip() or None

    def _row(self, contact: models.SourceContact, now: float) -> tuple[object, ...]:
        return (
            contact.contact_id,
            self._seal(contact),
            now,
            self.blind("email", contact.email),
            self.blind("phone", contact.mobile_phone),
            self.blind("member", contact.member_number),
            self._second_phone(contact),
        )

    def _second_phone(self, contact: models.SourceContact) -> bytes | None:
        """The other number's blind index; None when there is none or it is the same one."""
        if not contact.other_phone:
            return None
        blind = self.blind("phone", contact.other_phone)
        return None if blind == self.blind("phone", contact.mobile_phone) else blind

    # -- writes --------------------------------------------------------------------------

    def apply_page(self, source: str, page: models.ContactPage) -> None:
        """A page of changes and the cursor after it, in one transaction: never one alone."""
        self.apply_pages(source, [page])

    def apply_pages(self, source: str, pages: list[models.ContactPage]) -> None:
        """Several pages and the last one's cursor in one transaction (a crash replays them).

        The feed's order is the cloud's: the last change to an id wins, whatever its kind (a
        customer seen alive on one page and deleted on a later one stays deleted).
        """
        now = self._now()
        final = latest_changes(pages).values()
        rows = [self._row(c, now) for c in final if not c.deleted]
        gone = [c.contact_id for c in final if c.deleted]
        cursor = pages[-1].cursor
        drained = None if pages[-1].has_more else now

        def work(conn: sqlite3.Connection) -> None:
            self._delete(conn, gone)
            conn.executemany(UPSERT, rows)
            conn.execute(
                "INSERT INTO sync_cursors VALUES (?, ?, ?, ?) ON CONFLICT (source) "
                "DO UPDATE SET cursor = excluded.cursor, synced_at = excluded.synced_at, "
                "drained_at = COALESCE(excluded.drained_at, drained_at)",
                (source, cursor, now, drained),
            )

        self._write(work)

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """The initial download: rows go in without the lookup indexes, which are built at the
        end (or at the next open, after a crash) by sorting, not by a million random inserts.

        Lookups meanwhile still answer right, by scanning: slower, and only until the end.
        """
        self._write(self._drop_indexes)
        log.info("contact cache: bulk load, lookup indexes built at its end")
        try:
            yield
        finally:
            self.build_indexes()

    def build_indexes(self) -> None:
        """The lookup indexes a bulk load left out, built now by sorting (a no-op if there)."""
        self._write(self._build_indexes)
        self.checkpoint()  # the build went through the WAL in one go: give that space back

    @staticmethod
    def _drop_indexes(conn: sqlite3.Connection) -> None:
        for name in LOOKUP_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")

    @staticmethod
    def _build_indexes(conn: sqlite3.Connection) -> None:
        for name, target in LOOKUP_INDEXES.items():
            conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")

    def set_cursor(self, source: str, cursor: str | None) -> None:
        """Move a cursor by hand (None: from the start again)."""
        now = self._now()
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO sync_cursors VALUES (?, ?, ?, NULL) ON CONFLICT (source) "
                "DO UPDATE SET cursor = excluded.cursor, synced_at = excluded.synced_at",
                (source, cursor, now),
            )
        )

    def put(self, contact: models.SourceContact) -> None:
        """One contact, verified now (a live lookup's answer, a ghost-sweep re-fetch)."""
        row = self._row(contact, self._now())
        self._write(lambda conn: conn.execute(UPSERT, row))

    def delete(self, contact_ids: list[str]) -> int:
        return self._write(lambda conn: self._delete(conn, contact_ids))

    @staticmethod
    def _delete(conn: sqlite3.Connection, contact_ids: list[str]) -> int:
        before = conn.total_changes
        conn.executemany("DELETE FROM contacts WHERE contact_id = ?", [(i,) for i in contact_ids])
        return conn.total_changes - before

    def purge_unverified(self, older_than: float) -> int:
        """Remove contacts the cloud has not vouched for since older_than (the contact TTL)."""

        def work(conn: sqlite3.Connection) -> int:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT contact_id FROM contacts WHERE verified_at < ?", (older_than,)
                )
            ]
            return self._delete(conn, ids)

        return self._write(work)

    def forget(self, kind: str, value: str) -> int:
        """Remove every contact a key points at (erasure on request)."""
        return self.delete([c.contact.contact_id for c in self.find(kind, value)])

    # -- privacy (agent.privacy.SealedStore) ---------------------------------------------

    def purge_expired(self, now: float) -> int:
        return self.purge_unverified(now - self._ttl_seconds)

    def forget_person(self, *, email: str | None, mobile_phone: str | None) -> int:
        removed = 0
        for kind, value in (("email", email), ("phone", mobile_phone)):
            if value:
                removed += self.forget(kind, value)
        return removed

    def sealed_count(self, key_id: str) -> int:
        marker = key_id.encode()
        with self._reading() as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM contacts WHERE substr(sealed, 2, ?) = ?",
                (len(marker), marker),
            ).fetchone()
        return int(row[0])

    # -- reads ---------------------------------------------------------------------------

    def find(self, kind: str, value: str) -> list[CachedContact]:
        """Every cached contact with this key (two or more: the key is ambiguous)."""
        blind = self.blind(kind, value)
        if blind is None:
            return []
        column = KEY_COLUMNS[kind]
        where, args = f"{column} = ?", [blind]
        if kind == "phone":  # either of a contact's numbers
            where, args = "phone_key = ? OR phone2_key = ?", [blind, blind]
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT contact_id, sealed, verified_at FROM contacts WHERE {where}", args
            ).fetchall()
        return [CachedContact(self._open(row[0], row[1]), row[2]) for row in rows]

    def get(self, contact_id: str) -> models.SourceContact | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT contact_id, sealed FROM contacts WHERE contact_id = ?", (contact_id,)
            ).fetchone()
        return None if row is None else self._open(row[0], row[1])

    def least_recently_verified(self, count: int) -> list[str]:
        """The ids the ghost sweep re-fetches next."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT contact_id FROM contacts ORDER BY verified_at LIMIT ?", (count,)
            ).fetchall()
        return [row[0] for row in rows]

    def drained_at(self, source: str) -> float | None:
        """When a sync last reached the end of source's feed (None: never, still loading)."""
        return self._sync_state(source)[1]

    def cursor(self, source: str) -> str | None:
        return self._sync_state(source)[0]

    def _sync_state(self, source: str) -> tuple[str | None, float | None]:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT cursor, drained_at FROM sync_cursors WHERE source = ?", (source,)
            ).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def stats(self) -> dict[str, float | int | None]:
        """Size and freshness for the status page."""
        with self._reading() as conn:
            count, oldest = conn.execute(
                "SELECT COUNT(*), MIN(verified_at) FROM contacts"
            ).fetchone()
            synced = conn.execute("SELECT MAX(synced_at) FROM sync_cursors").fetchone()[0]
        return {"contacts": int(count), "oldestVerifiedAt": oldest, "lastSyncAt": synced}

    # -- plumbing ------------------------------------------------------------------------

    def _seal(self, contact: models.SourceContact) -> bytes:
        fields = [
            contact.first_name,
            contact.last_name,
            contact.email,
            contact.mobile_phone,
            contact.member_number,
        ]
        if contact.other_phone:
            fields.append(contact.other_phone)
        aad = crypto.record_aad("cache", contact.contact_id)
        return self._keyring.seal_bytes(msgspec.json.encode(fields), aad)

    def _open(self, contact_id: str, sealed: bytes) -> models.SourceContact:
        aad = crypto.record_aad("cache", contact_id)
        first, last, email, phone, member, *other = msgspec.json.decode(
            self._keyring.open_bytes(sealed, aad)
        )
        return models.SourceContact(
            contact_id=contact_id,
            first_name=first,
            last_name=last,
            email=email,
            mobile_phone=phone,
            member_number=member,
            other_phone=other[0] if other else None,
        )

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock, db.transaction(self._conn) as conn:
            return work(conn)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            try:
                yield self._reader
            except sqlite3.Error as exc:
                raise StorageError(f"contact cache: {exc}") from exc

    def checkpoint(self) -> None:
        with self._lock:
            db.checkpoint(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._read_lock:
            self._reader.close()
