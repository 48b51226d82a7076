"""Poison (issue 14, R12): no single record, and no hostile client, stops a till.

Every record here goes through the real agent (waitress on loopback, real SQLite, delivery on)
against the sandbox cloud: refused at the door with a 4xx, or dead-lettered with a reason in
words, while the next good sale is delivered within 10 s, health never turns red and the
destination is never shown unreachable for it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from agent.core.reasons import printable
from agent.sandbox import SandboxCloud
from tests.conftest import Till, base_config, make_receipt, merged
from tests.conftest import wait_for as wait_seconds
from tests.ledger_probe import LedgerProbe

GOOD_SALE_SECONDS = 10.0
# Short back-offs and few attempts, so a poison item reaches the dead letters within the test.
FAST = {
    "enabled": True,
    "backoff_initial_seconds": 0.05,
    "backoff_max_seconds": 0.5,
    "max_attempts": 3,
    "recovery_probe_seconds": 1.0,
}


@pytest.fixture
def cloud():
    sandbox = SandboxCloud(seed=14).serve()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def delivering(start_agent, tmp_path, cloud):
    """An agent delivering to the sandbox: Engage, Loaded and a webhook."""

    def start(**delivery):
        overrides = {
            "delivery": {**FAST, **delivery},
            "destinations": {
                "engage": {"base_url": cloud.url},
                "loaded": {"base_url": cloud.url + "/loaded"},
                "webhook": {
                    "kind": "webhook",
                    "base_url": cloud.url + "/webhook/till",
                    "takes": ["receipts", "contacts"],
                },
            },
        }
        return start_agent(merged(base_config(tmp_path), overrides))

    return start


def wait_for(condition: Callable[[], bool], seconds: float = GOOD_SALE_SECONDS) -> None:
    """tests.conftest.wait_for, bound by default by the issue's 10 s for the next good sale."""
    wait_seconds(condition, seconds)


def states(till) -> dict[str, str]:
    return {d["name"]: d["state"] for d in till.get("/v1/status").json()["destinations"]}


IN_CLOUD: dict[str, Callable[[SandboxCloud], Any]] = {
    "engage": lambda sandbox: sandbox.engage.receipts,
    "loaded": lambda sandbox: sandbox.loaded.orders,
    "webhook": lambda sandbox: webhook_keys(sandbox),
}


@pytest.mark.parametrize("kind", ["engage", "loaded", "webhook"])
def test_an_undecodable_queue_row_is_dead_lettered_and_the_rest_flow(
    delivering, cloud, tmp_path, kind
):
    """Failure matrix 21 from the disk: a row whose bytes are not even UTF-8."""
    agent, till = delivering(enabled=False)
    assert till.post("/v1/receipts", make_receipt("SPOILED")).status_code == 202
    till.close()
    agent.stop()
    with sqlite3.connect(tmp_path / "data" / "outbox.db") as conn:
        assert conn.execute(f"UPDATE ack_queue_{kind} SET data = X'FFFE00'").rowcount == 1
    conn.close()
    agent, till = delivering()
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: "GOOD-1" in IN_CLOUD[kind](cloud))
    wait_for(lambda: len(till.get("/v1/dead-letters").json()) == 1)
    (letter,) = till.get("/v1/dead-letters").json()
    assert letter["destination"] == kind
    assert (
        letter["reason"] == "cannot be sent as it is: the queued item cannot be read back: "
        "its bytes are not UTF-8"
    )
    assert agent.outbox.depth(kind).claimed == 0
    assert set(states(till).values()) == {"online"}
    spoiled = till.get("/v1/receipts/SPOILED").json()["destinations"]
    assert {d["destination"]: d["state"] for d in spoiled}[kind] == "dead_lettered"


def webhook_keys(cloud) -> set[str]:
    return {d.json["idempotencyKey"] for d in cloud.webhook.received if d.json.get("kind")}


# -- the reproductions of issue 14 -------------------------------------------------------


def test_receipts_naming_an_unknown_member_are_refused_and_the_next_sale_goes(delivering, cloud):
    _, till = delivering()
    for n in range(2):
        bad = make_receipt(f"BAD-{n}")
        bad["contact"] = {"localId": "loc_000000000000000000000000"}
        answer = till.post("/v1/receipts", bad)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"][0]["path"] == "$.contact.localId"
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: "GOOD-1" in cloud.engage.receipts)
    assert states(till)["engage"] == "online"


@pytest.mark.parametrize("total", ["Infinity", "NaN", "sNaN", "1e400", "1e999999999", "-Infinity"])
def test_receipts_with_a_total_that_is_no_amount_are_refused(delivering, cloud, total):
    _, till = delivering()
    for n in range(2):
        bad = make_receipt(f"BAD-{n}", contact=False)
        bad["totalGrossPrice"] = total
        answer = till.post("/v1/receipts", bad)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"][0]["path"] == "$.totalGrossPrice"
    till.post("/v1/receipts", make_receipt("GOOD-1", contact=False))
    wait_for(lambda: "GOOD-1" in cloud.loaded.orders)


@pytest.mark.parametrize(
    "receipt_id", ["S042-Łódź-000124", " LEADING-SPACE", "東京-0001", "a\u202eb"]
)
def test_a_receipt_id_that_cannot_be_a_header_is_delivered_everywhere(
    delivering, cloud, receipt_id
):
    _, till = delivering()
    assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: {receipt_id, "GOOD-1"} <= set(cloud.loaded.orders))
    wait_for(lambda: {receipt_id, "GOOD-1"} <= webhook_keys(cloud))
    wait_for(lambda: {receipt_id, "GOOD-1"} <= set(cloud.engage.receipts))
    assert till.get("/v1/health").status_code == 200
    assert set(states(till).values()) == {"online"}


@pytest.mark.parametrize("store_id", ["S042-Łódź", " S042", "S042\u202e"])
def test_a_store_id_that_cannot_be_a_header_still_registers_the_member(delivering, cloud, store_id):
    _, till = delivering()
    member = {"email": "poison.member@example.com", "storeExternalId": store_id}
    assert till.post("/v1/contacts", member).status_code == 202
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: "GOOD-1" in cloud.engage.receipts)
    wait_for(lambda: any(c.get("email") == member["email"] for c in cloud.engage.contacts.values()))
    assert till.get("/v1/health").status_code == 200


def test_a_contact_id_is_never_a_path_of_the_senders_choosing(delivering, cloud):
    _, till = delivering()
    hostile = {"contactId": "../../../loaded/pos/orders/eid:PWNED?x=1", "email": "x.y@example.com"}
    assert till.post("/v1/contacts", hostile).status_code == 202
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: "GOOD-1" in cloud.engage.receipts)
    wait_for(lambda: any(r.get("recordKey") for r in till.get("/v1/dead-letters").json()))
    for request in cloud.requests:
        if request.headers.get("Apikey"):
            assert request.path.startswith("/api/v2/"), request.path
        assert "PWNED" not in request.path or request.api == "engage", request.path
    assert "PWNED" not in json.dumps(list(cloud.loaded.orders))


# -- hostile clients (R13): none of them holds up a sale -----------------------------------

SALE_P99_SECONDS = 0.100


def raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    """One request written as bytes; (status, body, headers) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), body, headers


def p99_of_sales(till, count: int, prefix: str, rounds: int = 3) -> float:
    """The sales' p99, the best of up to `rounds` runs of `count` sales: a busy machine's
    scheduler (two cores, other suites running) adds stalls of its own to one run; a till
    really locked out or slowed by the attack is slow in every run."""
    best = float("inf")
    for run in range(rounds):
        took = []
        for n in range(count):
            started = time.perf_counter()
            answer = till.post("/v1/receipts", make_receipt(f"{prefix}-{run}-{n:04d}"))
            took.append(time.perf_counter() - started)
            assert answer.status_code == 202, answer.text
        best = min(best, statistics.quantiles(took, n=100)[98])
        if best <= SALE_P99_SECONDS:
            break
    return best


@pytest.fixture
def agent_apart(agent_process):
    """The agent in its own process (its own interpreter lock, as on a till), delivery off."""
    process = agent_process()
    process.start()
    till = Till(process.url, process.token)
    yield process, till
    till.close()


def test_a_long_path_from_any_web_page_never_holds_up_a_sale(agent_apart):
    """Issue 14: a 40,000-character path (any Host, no token) stalled every sale for 8 s in
    the log redaction; R13 asks for a 250 KB one too."""
    process, till = agent_apart
    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def attack() -> None:
        while not stop.is_set():
            for size in (40_000, 250_000):
                path = "/" + "a" * size
                request = f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
                started = time.perf_counter()
                status, body, _ = raw(process.port, request.encode())
                answers.append((status, time.perf_counter() - started))
                assert json.loads(body)["error"]["errorId"]

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        p99 = p99_of_sales(till, 150, "LONG")
    finally:
        stop.set()
        attacker.join(30)
    assert answers
    assert {status for status, _ in answers} == {414}
    assert p99 <= SALE_P99_SECONDS, p99
    assert max(seconds for _, seconds in answers) < 1.0
    logged = "".join(p.read_text() for p in Path(process.raw["agent"]["log_dir"]).glob("*.log"))
    assert "refused" in logged
    assert "a" * 200 not in logged + process.log()  # the route is logged, never the path


def test_a_thousand_slow_connections_never_lock_a_sale_out(agent_apart):
    """Issue 14: 100 slow connections (waitress's default limit) locked the POS out."""
    process, _ = agent_apart
    slow = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", process.port), timeout=5)
            sock.sendall(b"POST /v1/receipts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Len")
            slow.append(sock)
        till = Till(process.url, process.token)  # a new connection, after the slow ones
        try:
            p99 = p99_of_sales(till, 200, "SLOW")
        finally:
            till.close()
        assert p99 <= SALE_P99_SECONDS, p99
        slow[0].sendall(b"gth: 2\r\n\r\n{}")  # the first one finally finishes: answered
        assert slow[0].recv(65536).startswith(b"HTTP/1.1 ")
    finally:
        for sock in slow:
            sock.close()


def test_a_flood_of_status_page_loads_never_holds_up_a_sale(agent_process, tmp_path):
    """Issue 14: GET / (no token) loaded every dead letter to count them."""
    process = agent_process()
    process.start()
    process.terminate()
    with sqlite3.connect(tmp_path / "data" / "outbox.db") as conn:
        conn.executemany(
            "INSERT INTO dead_letters (destination, kind, record_key, revision, item, reason, "
            "error_id, created_at) VALUES ('loaded', 'receipt', ?, 1, '{}', 'refused', 'e', 0)",
            [(f"DL-{n}",) for n in range(20_000)],
        )
    conn.close()
    process.start()
    till = Till(process.url, process.token)
    stop = threading.Event()
    loads = []

    def refresh() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                page = session.get(process.url + "/", timeout=10)
                loads.append(page.status_code)
                assert b"20000 (till-agent dead-letters list)" in page.content

    flood = [threading.Thread(target=refresh) for _ in range(8)]
    for thread in flood:
        thread.start()
    try:
        p99 = p99_of_sales(till, 200, "PAGE")
    finally:
        stop.set()
        for thread in flood:
            thread.join(30)
        till.close()
    assert len(loads) > 50
    assert set(loads) == {200}
    assert p99 <= SALE_P99_SECONDS, p99


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        # headers past waitress's 256 KiB, never ended: all of it is read before the answer
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 263_000, 431, None),
        (
            b"POST /v1/receipts HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"100000\r\n"
            + b"x" * 0x100000
            + b"\r\n100\r\n"
            + b"x" * 0x100
            + b"\r\n0\r\n\r\n",
            413,
            "payload_too_large",
        ),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n", 400, "bad_request"),
    ],
    ids=["garbage", "headers", "chunked-body", "content-length"],
)
def test_what_the_server_itself_refuses_comes_in_the_one_error_shape(
    agent_till, request_bytes, status, code
):
    agent, _ = agent_till
    answer, body, headers = raw(agent.server.port, request_bytes)
    assert answer == status
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == (code or "headers_too_large")
    assert error["errorId"].startswith("err_")


def test_the_same_refused_body_is_kept_once_and_answered_with_the_same_error_id(agent_till):
    agent, till = agent_till
    bad = make_receipt("Q-1")
    bad["items"][0]["quantity"] = "one"
    ids = {till.post("/v1/receipts", bad).json()["error"]["errorId"] for _ in range(30)}
    assert len(ids) == 1
    with LedgerProbe(agent) as ledger:
        kept = [(q.error_id, q.times) for q in ledger.quarantine()]
    assert kept == [(ids.pop(), 30)]
    assert till.get("/v1/status").json()["counters"]["quarantined"] == 30


def test_refused_bodies_have_their_own_cap_and_never_refuse_a_sale(start_agent):
    agent, till = start_agent({"intake": {"quarantine_max_mb": 1}})
    filler = "x" * 60_000
    for n in range(60):  # ~5 MB of distinct refused bodies against a 1 MiB cap
        bad = make_receipt(f"Q-{n}")
        bad["items"][0]["articleName"] = filler
        bad["items"][0]["quantity"] = "one"
        assert till.post("/v1/receipts", bad).status_code == 422
        assert till.post("/v1/receipts", make_receipt(f"SALE-{n}")).status_code == 202
    with LedgerProbe(agent) as ledger:
        kept = sum(len(q.sealed_body or "") for q in ledger.quarantine())
        counted = ledger.counter("quarantine_bytes")
    assert 0 < kept <= 1024 * 1024
    assert counted == kept


def open_files() -> list[str]:
    """What this process has open right now (the agent runs in it)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def test_a_large_body_is_never_spilled_outside_the_data_directory(agent_till, tmp_path):
    """waitress spilled bodies over 512 KiB to $TMPDIR in plaintext while they arrived."""
    agent, till = agent_till
    body = json.dumps(make_receipt("BIG", lines=2) | {"note": "z" * 900_000}).encode()
    head = (
        f"POST /v1/receipts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {till.token}"
        f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    data_dir = str(tmp_path / "data")
    with socket.create_connection(("127.0.0.1", agent.server.port), timeout=10) as sock:
        before = set(open_files())
        sock.sendall(head + body[:800_000])  # past 512 KiB, not yet complete
        time.sleep(0.3)
        opened = set(open_files()) - before
        sock.sendall(body[800_000:])
        answer = sock.recv(65536)
    spilled = [p for p in opened if "(deleted)" in p or p.startswith(tempfile.gettempdir())]
    assert [p for p in spilled if not p.startswith(data_dir)] == []
    assert answer.startswith(b"HTTP/1.1 422")  # read whole, then refused: "note" is unknown


# -- the poison corpus (R12, issue 14 §7): every record through every destination kind -------

PERSON = "Anna Andersson, Storgatan 12, 123 45 Stockholm, anna.andersson@example.com, 0701234567"
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)*(?:Error|Exception)\b")
REFUSED_EMAIL = "refused.member@example.com"
HOSTILE_ID = "../../../loaded/pos/orders/eid:PWNED?x=1#y"


@dataclass(frozen=True)
class Poison:
    """One record: what the POS sends (and what the cloud is told to do with it first)."""

    name: str
    body: Callable[[str], dict[str, Any]]  # built from a fresh, harmless id
    expect: str  # "refused" (4xx at the door), "delivered", "dead" (dead-lettered), "taken"
    route: str = "/v1/receipts"
    path: str | None = None  # the field a 422 names
    receipt_id: str | None = None  # the id the record goes under (default: the fresh id)
    cloud: Callable[[SandboxCloud, str], None] | None = None  # the cloud's part, set first
    kinds: frozenset[str] = frozenset({"engage", "loaded", "webhook"})


def receipt(receipt_id: str, **fields: Any) -> dict[str, Any]:
    return make_receipt(receipt_id) | fields


def with_item(receipt_id: str, **fields: Any) -> dict[str, Any]:
    body = make_receipt(receipt_id)
    body["items"][0].update(fields)
    return body


def with_contact(contact: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    return lambda rid: receipt(rid, contact=contact)


def named(receipt_id: str) -> Poison:
    """A receipt id the POS may well send: it goes everywhere, unchanged."""
    return Poison(f"id {receipt_id!r}", receipt, "delivered", receipt_id=receipt_id)


def refused_by_cloud(name: str, message: str) -> Poison:
    def cloud(sandbox: SandboxCloud, rid: str) -> None:
        sandbox.faults.reject_ids([rid], 400, message=message)

    return Poison(name, receipt, "dead", cloud=cloud)


def store(store_id: str) -> Poison:
    def body(rid: str) -> dict[str, Any]:
        return receipt(rid, storeExternalId=store_id)

    return Poison(f"store {store_id!r}", body, "delivered")


def total(value: str) -> Poison:
    def body(rid: str) -> dict[str, Any]:
        return receipt(rid, totalGrossPrice=value)

    return Poison(f"total {value[:12]!r}", body, "refused", path="$.totalGrossPrice")


def match_key(kind: str, key: str) -> Poison:
    contact = {"matchKey": key, "matchKeyType": kind}
    return Poison(
        f"{kind} {key[:20]!r}", with_contact(contact), "refused", path="$.contact.matchKey"
    )


def member(**fields: Any) -> Callable[[str], dict[str, Any]]:
    return lambda rid: {"email": f"m.{abs(hash(rid)) % 10**8}@example.com", **fields}


CORPUS = [
    # -- from the POS: ids in many scripts, with spaces, bidi and zero-width characters
    *(
        named(receipt_id)
        for receipt_id in (
            "S042-Łódź-000124",
            "東京-0001",
            "متجر-0001",
            "חנות-0001",
            "Москва-0001",
            "Αθήνα-0001",
            "मुंबई-0001",
            "กรุงเทพ-0001",
            "서울-0001",
            "🧾-0001",
            " LEADING-SPACE",
            "TRAILING-SPACE ",
            "IN NER SPACE",
            "a\u202eb",
            "a\u200fb",
            "a\u2066b\u2069",
            "a\u200bb",
            "../../etc/passwd",
            "a?b=c&d",
            "a#b",
            "a%2Fb",
            "a/b",
        )
    ),
    # -- control characters in an id: refused at the door
    *(
        Poison(f"id {rid!r}", receipt, "refused", receipt_id=rid, path="$.uniqueReceiptId")
        for rid in ("a\x00b", "\x1b[31mRED", "a\tb", "a\nb")
    ),
    # -- store ids no header can carry
    *(store(sid) for sid in ("S042-Łódź", " S042", "S042\u202e")),
    # -- amounts that are no amount
    *(total(value) for value in ("Infinity", "-Infinity", "NaN", "sNaN", "1e400", "1e999999999")),
    total("9" * 5000),
    Poison(
        "line price 1e15",
        lambda rid: with_item(rid, grossPaidPrice="1e15"),
        "refused",
        path="$.items[0].grossPaidPrice",
    ),
    Poison(
        "tax percent NaN",
        lambda rid: with_item(rid, taxPercent="NaN"),
        "refused",
        path="$.items[0].taxPercent",
    ),
    Poison(
        "payment of 9 decimal places",
        lambda rid: receipt(rid, paymentMethods=[{"type": "card", "value": "20.000000001"}]),
        "refused",
        path="$.paymentMethods[0].value",
    ),
    # -- members: a localId never issued, one whose registration the cloud refused
    Poison(
        "unknown localId",
        with_contact({"localId": "loc_000000000000000000000000"}),
        "refused",
        path="$.contact.localId",
    ),
    Poison("refused localId", lambda rid: receipt(rid), "taken"),  # built in run_poison
    # -- match keys no cloud can match
    match_key("MobilePhone", "hello"),
    match_key("MobilePhone", "+1" + "9" * 30),
    match_key("Email", "not-an-email"),
    match_key("Email", "anna@exa\u202emple.com"),
    match_key("MemberNumber", "   "),
    # -- members registered at the till
    Poison("member email 'x@'", lambda rid: {"email": "x@"}, "refused", "/v1/contacts", "$.email"),
    Poison(
        "member phone 'hello'",
        lambda rid: {"mobilePhone": "hello"},
        "refused",
        "/v1/contacts",
        "$.mobilePhone",
    ),
    Poison(
        "member store 'S042-Łódź'", member(storeExternalId="S042-Łódź"), "taken", "/v1/contacts"
    ),
    Poison("member store ' S042'", member(storeExternalId=" S042"), "taken", "/v1/contacts"),
    Poison("member contactId '../'", member(contactId=HOSTILE_ID), "taken", "/v1/contacts"),
    # -- from the cloud: error bodies with personal data, markup, control characters
    refused_by_cloud("cloud error with personal data", PERSON),
    refused_by_cloud("cloud error with markup", "<script>alert(1)</script><b>refused</b>"),
    refused_by_cloud("cloud error with escapes", "\x1b[2J\x1b]0;pwned\x07\u202erefused\x00"),
    refused_by_cloud("cloud error of 100 kB", "refused " * 12_500),
    # -- from the cloud: a contact id with ../, ? and # (Engage's own id for a member)
    Poison(
        "cloud contact id '../?#'",
        lambda rid: {"email": "cloud.id@example.com", "firstName": "X"},
        "taken",
        "/v1/contacts",
        cloud=lambda sandbox, rid: seed_hostile_contact(sandbox),
        kinds=frozenset({"engage"}),
    ),
]


def seed_hostile_contact(sandbox: SandboxCloud) -> None:
    """Engage's own id for a member is a path: the agent must keep it one URL segment."""
    sandbox.engage.add_contact(contact_id=HOSTILE_ID, email="cloud.id@example.com")


def destination_config(kind: str, url: str) -> dict[str, Any]:
    """Only this kind delivers: the others in base_config are switched off."""
    others = {"engage": {"enabled": False}, "loaded": {"enabled": False}}
    if kind == "engage":
        return others | {"engage": {"base_url": url}}
    if kind == "loaded":
        return others | {"loaded": {"base_url": url + "/loaded"}}
    hook = {"kind": "webhook", "base_url": url + "/webhook/till", "takes": ["receipts", "contacts"]}
    return others | {"webhook": hook}


class Watch:
    """Polls health and the destination's state all along: red or unreachable is recorded."""

    def __init__(self, till: Till, destination: str) -> None:
        self.seen: list[str] = []
        self._till, self._destination = Till(till.url, till.token), destination
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if (health := self._till.get("/v1/health")).status_code != 200:
                self.seen.append(f"health {health.status_code}: {health.text[:200]}")
            for d in self._till.get("/v1/status").json()["destinations"]:
                if d["name"] == self._destination and (
                    d["state"] == "offline" or "unreachable" in d["detail"]
                ):
                    self.seen.append(f"{d['state']}: {d['detail']}")

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(10)
        self._till.close()
        return self.seen


def state_in(till: Till, receipt_id: str, destination: str) -> str | None:
    answer = till.get("/v1/receipts/" + quote(receipt_id, safe=""))
    if answer.status_code != 200:
        return None
    states = {d["destination"]: d["state"] for d in answer.json()["destinations"]}
    return states.get(destination)


def test_the_corpus_is_large_and_covers_pos_cloud_and_disk():
    assert len(CORPUS) >= 40
    assert len({p.name for p in CORPUS}) == len(CORPUS)
    # the disk's own poison, an undecodable row, is the parametrised test above
    assert any(p.cloud for p in CORPUS)
    assert any(p.route == "/v1/contacts" for p in CORPUS)


@pytest.mark.parametrize("kind", ["engage", "loaded", "webhook"])
def test_no_poison_record_stops_a_destination(start_agent, tmp_path, cloud, kind):
    """Each record: refused with a 4xx, or taken and then delivered or dead-lettered with a
    reason in words; the good sale behind it delivered within 10 s; health never red and the
    destination never shown unreachable."""
    overrides = {"delivery": FAST, "destinations": destination_config(kind, cloud.url)}
    _, till = start_agent(merged(base_config(tmp_path), overrides))
    cloud.engage.refused_emails.add(REFUSED_EMAIL)
    watch = Watch(till, kind)
    taken: dict[str, Poison] = {}
    try:
        for n, poison in enumerate(p for p in CORPUS if kind in p.kinds):
            rid = poison.receipt_id or f"P-{kind}-{n:03d}"
            taken |= run_poison(till, cloud, kind, poison, rid)
            good = f"GOOD-{kind}-{n:03d}"
            assert till.post("/v1/receipts", make_receipt(good)).status_code == 202
            wait_for(functools.partial(delivered, till, good, kind))
            if poison.cloud is not None and rid in taken:
                # The sandbox holds one fault of a kind at a time, and sends are in flight
                # several at once (delivery.in_flight): the good sale may land first.
                wait_for(functools.partial(decided, till, rid, kind))
        wait_for(lambda: settled(till, kind), 30)
    finally:
        troubles = watch.stop()
    assert troubles == []
    check_fates(till, kind, taken)
    requests_seen = [(r.path, r.headers.get("Apikey")) for r in cloud.requests]
    assert not [p for p, key in requests_seen if key and not p.startswith("/api/v2/")]
    assert "PWNED" not in json.dumps(list(cloud.loaded.orders))


def run_poison(
    till: Till, cloud: SandboxCloud, kind: str, poison: Poison, rid: str
) -> dict[str, Poison]:
    """Sends one record; {id: poison} when it was taken (its fate is checked at the end)."""
    if poison.cloud is not None:
        poison.cloud(cloud, rid)
    body = poison.body(rid)
    if poison.name == "refused localId":
        registered = till.post("/v1/contacts", {"email": REFUSED_EMAIL})
        assert registered.status_code == 202, registered.text
        body["contact"] = {"localId": registered.json()["localId"]}
    answer = till.post(poison.route, body)
    assert answer.status_code < 500, (poison.name, answer.text)
    if poison.expect == "refused":
        assert 400 <= answer.status_code < 500, (poison.name, answer.status_code)
        error = answer.json()["error"]
        assert error["errorId"].startswith("err_")
        if poison.path is not None:
            assert error["details"][0]["path"] == poison.path, (poison.name, error)
        return {}
    assert answer.status_code in (200, 202), (poison.name, answer.text)
    return {rid: poison} if poison.route == "/v1/receipts" else {}


def delivered(till: Till, receipt_id: str, kind: str) -> bool:
    return state_in(till, receipt_id, kind) == "delivered"


def decided(till: Till, receipt_id: str, kind: str) -> bool:
    return state_in(till, receipt_id, kind) in ("delivered", "dead_lettered")


def settled(till: Till, kind: str) -> bool:
    (mine,) = [d for d in till.get("/v1/status").json()["destinations"] if d["name"] == kind]
    return mine["depth"] + mine["inFlight"] + mine["setAside"] == 0


def check_fates(till: Till, kind: str, taken: dict[str, Poison]) -> None:
    letters = {d["recordKey"]: d for d in till.get("/v1/dead-letters").json()}
    for rid, poison in taken.items():
        fate = state_in(till, rid, kind)
        if kind == "engage" and poison.name == "refused localId":
            assert fate == "dead_lettered", (poison.name, fate)
        elif poison.expect in ("delivered", "dead"):
            wanted = "delivered" if poison.expect == "delivered" else "dead_lettered"
            assert fate == wanted, (poison.name, fate)
        else:
            assert fate in ("delivered", "dead_lettered"), (poison.name, fate)
    for letter in letters.values():
        reason = letter["reason"]
        assert reason, letter
        assert printable(reason) == reason, reason
        assert not CLASS_NAME.search(reason), reason
        for personal in ("Anna", "Storgatan", "anna.andersson", "0701234567", "<script"):
            assert personal not in reason, reason


# -- ids in URLs (issue 14 §2, §7): every kind that puts an id in a path keeps it one segment --

# (An id of dots only names no record in any URL: path_segment refuses it, tests/connectors.)
HOSTILE_IDS = (HOSTILE_ID, "a/b", "a/../b", "a?b=c&d", "a#b", "a%2Fb", "S042-Łódź", " x y")
LOADED_ROOT = "/loaded/v1/pos"


def one_line(receipt_id: str, quantity: int) -> dict[str, Any]:
    """A one-line receipt whose ids (receipt, item, category) are all receipt_id's."""
    body = make_receipt(receipt_id, lines=1, contact=False)
    amount = f"{10 * quantity}.00"
    body["items"][0].update(
        sku=receipt_id, articleGroup=receipt_id, articleName=f"article {quantity}",
        quantity=quantity, grossPaidPrice=amount, taxAmount=f"{2 * quantity}.00",
    )  # fmt: skip
    body["totalGrossPrice"] = amount
    body["paymentMethods"][0]["value"] = amount
    return body


def amended_at_loaded(cloud: SandboxCloud, order_id: str) -> bool:
    order = cloud.loaded.orders.get(order_id) or {}
    return bool(order.get("items")) and order["items"][0].get("quantity") == 2


def loaded_targets(cloud: SandboxCloud) -> list[tuple[str, str]]:
    """(method, the request-target as sent) of every call to Loaded's POS records."""
    return [
        (r.method, r.target)
        for r in cloud.requests
        if r.api == "loaded" and r.target.startswith(LOADED_ROOT)
    ]


def test_pos_ids_with_dot_dots_queries_and_fragments_stay_one_segment_at_loaded(
    start_agent, tmp_path, cloud
):
    """Loaded names orders, items and categories by the POS's ids in the path (eid:<id>): a
    create, an amendment (PATCH) and a changed catalogue entry (PATCH) each reach the quoted
    path, never a path the id spells out, and nothing else."""
    overrides = {"delivery": FAST, "destinations": destination_config("loaded", cloud.url)}
    _, till = start_agent(merged(base_config(tmp_path), overrides))
    for hostile in HOSTILE_IDS:
        assert till.post("/v1/receipts", one_line(hostile, 1)).status_code == 202
        wait_for(functools.partial(delivered, till, hostile, "loaded"))
        assert till.post("/v1/receipts", one_line(hostile, 2)).status_code == 202
        wait_for(functools.partial(amended_at_loaded, cloud, hostile))
    wait_for(lambda: settled(till, "loaded"), 30)
    quoted = {quote(h, safe="") for h in HOSTILE_IDS}
    allowed = {f"{LOADED_ROOT}/{kind}" for kind in ("orders", "items", "categories")} | {
        f"{LOADED_ROOT}/{kind}/eid:{q}"
        for kind in ("orders", "items", "categories")
        for q in quoted
    }
    seen = loaded_targets(cloud)
    assert [target for _, target in seen if target not in allowed] == []
    for q in quoted:  # the amendment and the renamed item went to their own quoted paths
        assert ("PATCH", f"{LOADED_ROOT}/orders/eid:{q}") in seen, q
        assert ("PATCH", f"{LOADED_ROOT}/items/eid:{q}") in seen, q
    assert set(HOSTILE_IDS) <= set(cloud.loaded.orders)  # each order under its own id
    assert set(HOSTILE_IDS) <= set(cloud.loaded.items)
    assert "PWNED" not in cloud.loaded.orders  # no record at a path the id spelt out


def test_a_webhook_is_only_ever_called_at_its_configured_url(start_agent, tmp_path, cloud):
    """The webhook puts no id in its URL: hostile receipt ids, store ids and contact ids go in
    the signed body (and an ASCII digest in Idempotency-Key), never in the path or a query."""
    overrides = {"delivery": FAST, "destinations": destination_config("webhook", cloud.url)}
    _, till = start_agent(merged(base_config(tmp_path), overrides))
    for n, hostile in enumerate(HOSTILE_IDS):
        assert till.post("/v1/receipts", one_line(hostile, 1)).status_code == 202
        member = {
            "email": f"hook.{n}@example.com",
            "contactId": hostile,
            "storeExternalId": hostile,
        }
        assert till.post("/v1/contacts", member).status_code == 202
    wait_for(lambda: settled(till, "webhook"), 30)
    hook = [r for r in cloud.requests if r.api == "webhook"]
    assert len(hook) >= 2 * len(HOSTILE_IDS)
    assert {r.target for r in hook} == {"/webhook/till"}
    for hostile in HOSTILE_IDS:
        assert delivered(till, hostile, "webhook"), hostile


def test_cloud_ids_with_dot_dots_queries_and_fragments_stay_one_segment_at_lightspeed(
    tmp_path, cloud
):
    """Lightspeed's own customer ids come back in a path (the ghost sweep's GET customers/{id}):
    each is fetched at its quoted path, found there, and nothing else is asked for."""
    from agent.contacts import ContactCache
    from agent.contacts.sync import ContactSync
    from agent.core import crypto
    from agent.core.health import Health
    from tests.test_contact_sync_e2e import lightspeed_source

    for n, hostile in enumerate(HOSTILE_IDS):
        cloud.lightspeed.upsert_customer(hostile, email=f"ls.{n}@example.com", first_name="Zz")
    keyring = crypto.load_or_create(tmp_path / "keyring.json", may_create=True)
    cache = ContactCache(tmp_path, keyring, default_region="SE", ttl_days=30)
    try:
        source = lightspeed_source(cloud.url, tmp_path)
        sync = ContactSync(source, cache, Health(), ghost_batch=100, fetch_one=source.fetch_contact)
        report = sync.run_once()
        assert report.changes == len(HOSTILE_IDS)
        fetched = {r.target for r in cloud.requests if r.api == "lightspeed"}
        ones = {t for t in fetched if t.startswith("/api/2.0/customers/")}
        assert ones == {f"/api/2.0/customers/{quote(h, safe='')}" for h in HOSTILE_IDS}
        feed = {t.partition("?")[0] for t in fetched - ones}
        assert feed == {"/api/2.0/customers"}  # the feed: its own path, parameters in the query
        assert report.ghosts_removed == 0  # each found at its own path: nobody taken for gone
        assert cache.stats()["contacts"] == len(HOSTILE_IDS)
    finally:
        cache.close()


DEEP = 100_000
DEEP_BODIES = {
    "arrays in a field": '{"uniqueReceiptId": "R-DEEP", "items": ' + "[" * DEEP + "]" * DEEP + "}",
    "objects in a field": '{"email": "x@example.com", "x": '
    + '{"a": ' * DEEP
    + "1"
    + "}" * DEEP
    + "}",
    "arrays alone": "[" * DEEP + "]" * DEEP,
}


@pytest.mark.parametrize(
    "route",
    ["/v1/receipts", "/v1/contacts", "/v1/replay", "/v1/privacy/forget", "/v1/delivery/retry-now"],
)
def test_a_body_nested_a_hundred_thousand_deep_is_refused_in_words(agent_till, route):
    """Issue 14 §5: 100,000 nested brackets answered 500 (the quarantine's reading of the body
    for the person in it recursed too deep)."""
    agent, till = agent_till
    for name, body in DEEP_BODIES.items():
        answer = till.session.post(
            till.url + route,
            data=body.encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {till.token}"},
            timeout=10,
        )
        assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text[:200])
        assert answer.json()["error"]["errorId"].startswith("err_"), name
    with LedgerProbe(agent) as ledger:  # too deep to read: the refusal is kept, not the body
        assert [q.sealed_body for q in ledger.quarantine() if q.sealed_body is not None] == []
    assert till.post("/v1/receipts", make_receipt("GOOD-AFTER")).status_code == 202
