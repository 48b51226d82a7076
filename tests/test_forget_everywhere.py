"""After `forget`, no trace of the person in any table of any store, nor in any file (issue 14 §4).

The scan is driven by each store's own schema (sqlite_master): a table added later is scanned
without touching this test. Every value is checked for the person's identifiers in clear (in
UTF-8, UTF-16 and JSON-escaped), for their keyed hashes and blind indexes, and every sealed value
is opened (with the record ids its row names) and its plaintext checked too; a sealed value the
scan cannot open fails the test, so a new kind of sealed record cannot hide from it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.contacts import ContactCache
from agent.core import crypto
from agent.core.errors import KeyStoreError
from agent.core.matchkeys import subject_keys
from agent.sandbox import SandboxCloud
from tests.conftest import Till, make_receipt, wait_for
from tests.test_cli import till_agent
from tests.test_privacy_scan import encodings

# Synthetic and plainly not a real person; ASCII so the JSON-escaped form is the same text.
EMAIL = "zz.forget.me.4821@example.com"
PHONE = "+46700004821"
PHONE_AS_TYPED = "070-000 48 21"
PERSON = {
    "firstName": "Qxforgetta",
    "lastName": "Zzylbersson",
    "email": EMAIL,
    "mobilePhone": PHONE,
    "street": "Forgetgatan 7",
    "memberNumber": "MBR-FORGET-9931",
}
MOVED_TO = "Forgetgatan 8"  # the contact change
IN_CLEAR = [*PERSON.values(), MOVED_TO, PHONE_AS_TYPED, "0700004821", "46700004821"]
# Every record id a sealed value is bound to is "<kind>:<id>" (crypto.record_aad)
AAD_KINDS = ("receipt", "contact", "quarantine", "cache", "token")
SQLITE_HEADER = b"SQLite format 3\x00"
TOKEN = re.compile(r"s1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_=-]+")


class Scan:
    """Every place in a data directory where the person can still be read or found."""

    def __init__(self, data_dir: Path, keyring: crypto.Keyring, scratch: Path) -> None:
        self.data_dir, self.keyring = data_dir, keyring
        scratch.mkdir()
        cache = ContactCache(scratch, keyring, default_region="SE")  # its blind indexes only
        try:
            blinds = [cache.blind("email", EMAIL), cache.blind("phone", PHONE)]
            blinds += [cache.blind("member", PERSON["memberNumber"])]
        finally:
            cache.close()
        keys = subject_keys(email=EMAIL, mobile_phone=PHONE, default_region="SE")
        hashes = [keyring.keyed_hash(k.encode()) for k in keys]
        self.forms = {v: encodings(v) for v in [*IN_CLEAR, *hashes]}
        self.forms |= {b.hex(): [b, b.hex().encode()] for b in blinds if b is not None}
        self.unopened: list[str] = []

    def hits(self) -> dict[str, set[str]]:
        """{where: identifiers found}: tables as "file:table.column", other files by name."""
        found: dict[str, set[str]] = {}
        for path in sorted(p for p in self.data_dir.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if data.startswith(SQLITE_HEADER):
                for where, names in self._tables(path):
                    found.setdefault(where, set()).update(names)
            names = self.found_in(data)  # every file's bytes too: -wal, -shm, the key file, ...
            if names:
                found.setdefault(path.name, set()).update(names)
        return found

    def _tables(self, path: Path) -> Iterator[tuple[str, set[str]]]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [
                name
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            for table in tables:
                cursor = conn.execute(f'SELECT * FROM "{table}"')
                columns = [d[0] for d in cursor.description]
                for row in cursor:
                    yield from self._row(f"{path.name}:{table}", columns, row)
        finally:
            conn.close()

    def _row(
        self, where: str, columns: list[str], row: tuple[Any, ...]
    ) -> Iterator[tuple[str, set[str]]]:
        ids = record_ids(columns, row)
        for column, value in zip(columns, row, strict=True):
            data = value.encode() if isinstance(value, str) else value
            if not isinstance(data, bytes):
                continue
            names = self.found_in(data) | self._in_sealed(f"{where}.{column}", data, ids)
            if names:
                yield f"{where}.{column}", names

    def found_in(self, data: bytes) -> set[str]:
        lowered = data.lower()
        return {
            name
            for name, forms in self.forms.items()
            if any(f in data or f.lower() in lowered for f in forms)
        }

    def _in_sealed(self, where: str, data: bytes, ids: list[str]) -> set[str]:
        """What the sealed values in data hold: text tokens (anywhere, JSON included) and the
        binary form (key id, nonce, ciphertext) a whole column may be."""
        opened = [self._open(where, t, ids) for t in TOKEN.findall(data.decode("utf-8", "replace"))]
        if self._binary_sealed(data):
            opened.append(self._open_bytes(where, data, ids))
        return set().union(*(self.found_in(o) for o in opened if o is not None))

    def _binary_sealed(self, data: bytes) -> bool:
        size = data[0] if data else 0
        known = {k.key_id.encode() for k in self.keyring.data_keys()}
        return len(data) > size + 12 and data[1 : 1 + size] in known

    def _open(self, where: str, token: str, ids: list[str]) -> bytes | None:
        for aad in ids:
            with contextlib.suppress(KeyStoreError):  # not this record's id
                return self.keyring.open(token, aad)
        self.unopened.append(where)
        return None

    def _open_bytes(self, where: str, blob: bytes, ids: list[str]) -> bytes | None:
        for aad in ids:
            with contextlib.suppress(KeyStoreError):  # not this record's id
                return self.keyring.open_bytes(blob, aad)
        self.unopened.append(where)
        return None


def record_ids(columns: list[str], row: tuple[Any, ...]) -> list[str]:
    """The record ids a sealed value in this row can be bound to: "<kind>:<any value the row
    names>", nested JSON included, and a dead letter's excerpt id."""
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in row]
    values = [v for v in values if isinstance(v, str | int) and not isinstance(v, bool)]
    texts = {str(v) for v in values}
    for value in values:  # a queue item is JSON (text or bytes): its kind and key are in it
        if isinstance(value, str) and value[:1] in "{[":
            with contextlib.suppress(ValueError):
                texts |= set(strings_in(json.loads(value)))
    ids = [crypto.record_aad(kind, text) for kind, text in itertools.product(AAD_KINDS, texts)]
    named = dict(zip(columns, row, strict=True))
    if {"destination", "record_key", "revision"} <= named.keys():
        ids.append(crypto.excerpt_aad(named["destination"], named["record_key"], named["revision"]))
    return ids


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, str | int) and not isinstance(value, bool):
        yield str(value)


@pytest.fixture
def cloud() -> Iterator[SandboxCloud]:
    sandbox = SandboxCloud(seed=31).serve()
    yield sandbox
    sandbox.stop()


def buyer(receipt_id: str, key: str, key_type: str) -> dict[str, Any]:
    body = make_receipt(receipt_id)
    body["contact"] = {"matchKey": key, "matchKeyType": key_type}
    return body


def state(till: Till, receipt_id: str, destination: str) -> str | None:
    answer = till.get(f"/v1/receipts/{receipt_id}")
    states = {d["destination"]: d["state"] for d in answer.json().get("destinations", [])}
    return states.get(destination)


def set_aside(till: Till, receipt_id: str) -> bool:
    items = till.get("/v1/set-aside", params={"destination": "loaded"}).json()["items"]
    return any(i["recordKey"] == receipt_id for i in items)


def leave_traces_everywhere(till: Till, cloud: SandboxCloud) -> None:
    """The person through every path: registration, cache row, change, receipts delivered
    (journal), dead-lettered (with the cloud's excerpt), set aside, refused (quarantine)."""
    assert till.post("/v1/contacts", PERSON).status_code == 202  # the registration
    wait_for(lambda: any(c.get("email") == EMAIL for c in cloud.engage.contacts.values()))
    (contact_id,) = [i for i, c in cloud.engage.contacts.items() if c.get("email") == EMAIL]
    assert till.post("/v1/contacts/sync", {}).status_code == 200  # the contact cache's row
    found = till.get("/v1/contacts/lookup", params={"email": EMAIL}).json()
    assert found["source"] == "cache"
    change = {"contactId": contact_id, "email": EMAIL, "street": MOVED_TO}
    assert till.post("/v1/contacts", change).status_code == 202  # a contact change
    cloud.faults.reject_ids(["R-DEAD"], 400, api="engage", message=f"{PERSON['firstName']} bad")
    cloud.faults.reject_ids(["R-ASIDE"], 500, api="loaded", message="try again")
    for body in (
        buyer("R-JOURNAL", EMAIL, "email"),  # delivered: kept in the replay journal
        buyer("R-DEAD", EMAIL, "email"),  # refused by Engage: a dead letter with its excerpt
        buyer("R-ASIDE", PHONE_AS_TYPED, "mobilePhone"),  # failing alone at Loaded: set aside
        make_receipt("R-AFTER", contact=False),  # ... once a sale waits behind it
    ):
        assert till.post("/v1/receipts", body).status_code == 202
    for refused in (buyer("R-BAD-1", EMAIL, "Bogus"), buyer("R-BAD-2", PHONE, "Bogus")):
        assert till.post("/v1/receipts", refused).status_code == 422  # quarantined
    wait_for(lambda: state(till, "R-JOURNAL", "engage") == "delivered")
    wait_for(lambda: state(till, "R-JOURNAL", "loaded") == "delivered")
    wait_for(lambda: state(till, "R-DEAD", "engage") == "dead_lettered")
    wait_for(functools.partial(set_aside, till, "R-ASIDE"))
    wait_for(lambda: cloud.engage.contacts[contact_id].get("street") == MOVED_TO)


def test_forget_leaves_no_trace_in_any_table_or_file(agent_process, tmp_path, cloud):
    process = agent_process(
        {
            "agent": {"log_level": "DEBUG"},
            "delivery": {
                "enabled": True,
                "backoff_initial_seconds": 5.0,
                "backoff_max_seconds": 30.0,
                "max_attempts": 100,
                "set_aside_after_attempts": 1,
            },
            "contacts": {"source": "engage"},
            "destinations": {
                "engage": {"base_url": cloud.url},
                "loaded": {"base_url": cloud.url + "/loaded"},
            },
        }
    )
    process.start()
    till = Till(process.url, process.token)
    leave_traces_everywhere(till, cloud)
    data_dir = tmp_path / "data"
    keyring = crypto.load_or_create(data_dir / "keyring.json", may_create=False)
    before = Scan(data_dir, keyring, tmp_path / "scratch-1")
    places = {where.rsplit(".", 1)[0] for where in before.hits()}
    assert before.unopened == []
    for place in ("outbox.db:subjects", "outbox.db:quarantine", "outbox.db:dead_letters",
                  "outbox.db:journal", "outbox.db:ack_queue_engage", "outbox.db:ack_queue_loaded",
                  "contacts.db:contacts"):  # fmt: skip
        assert place in places, (place, sorted(places))  # each path left its trace
    forgot = till_agent("forget", "--config", str(process.config_path),
                        "--email", EMAIL, "--mobile-phone", PHONE_AS_TYPED)  # fmt: skip
    assert forgot.returncode == 0, forgot.stderr
    till.close()
    assert process.terminate() == 0
    keyring = crypto.load_or_create(data_dir / "keyring.json", may_create=False)
    after = Scan(data_dir, keyring, tmp_path / "scratch-2")
    assert after.hits() == {}
    assert after.unopened == []  # every sealed value was opened and read
    logs = [*(tmp_path / "logs").glob("*"), tmp_path / "agent-stderr.log"]
    assert [p.name for p in logs if after.found_in(p.read_bytes())] == []
