"""Poison (issue 14, R12): no single record, and no hostile client, stops a till.

Every record here goes through the real agent (waitress on loopback, real SQLite, delivery on)
against the sandbox cloud: refused at the door with a 4xx, or dead-lettered with a reason in
words, while the next good sale is delivered within 10 s, health never turns red and the
destination is never shown unreachable for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from agent.sandbox import SandboxCloud
from tests.conftest import Till, base_config, make_receipt, merged

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
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def states(till) -> dict[str, str]:
    return {d["name"]: d["state"] for d in till.get("/v1/status").json()["destinations"]}


def test_an_undecodable_queue_row_is_dead_lettered_and_the_rest_flow(delivering, cloud, tmp_path):
    """Failure matrix 21 from the disk: a row whose bytes are not even UTF-8."""
    agent, till = delivering(enabled=False)
    assert till.post("/v1/receipts", make_receipt("SPOILED", contact=False)).status_code == 202
    till.close()
    agent.stop()
    with sqlite3.connect(tmp_path / "data" / "outbox.db") as conn:
        assert conn.execute("UPDATE ack_queue_loaded SET data = X'FFFE00'").rowcount == 1
    conn.close()
    agent, till = delivering()
    till.post("/v1/receipts", make_receipt("GOOD-1", contact=False))
    wait_for(lambda: "GOOD-1" in cloud.loaded.sales)
    wait_for(lambda: len(till.get("/v1/dead-letters").json()) == 1)
    (letter,) = till.get("/v1/dead-letters").json()
    assert (
        letter["reason"] == "cannot be sent as it is: the queued item cannot be read back: "
        "its bytes are not UTF-8"
    )
    assert agent.outbox.depth("loaded").claimed == 0
    assert states(till)["loaded"] == "online"
    spoiled = till.get("/v1/receipts/SPOILED").json()["destinations"]
    assert {d["destination"]: d["state"] for d in spoiled}["loaded"] == "dead_lettered"


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
    wait_for(lambda: "GOOD-1" in cloud.loaded.sales)


@pytest.mark.parametrize(
    "receipt_id", ["S042-Łódź-000124", " LEADING-SPACE", "東京-0001", "a\u202eb"]
)
def test_a_receipt_id_that_cannot_be_a_header_is_delivered_everywhere(
    delivering, cloud, receipt_id
):
    _, till = delivering()
    assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: {receipt_id, "GOOD-1"} <= set(cloud.loaded.sales))
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
    hostile = {"contactId": "../../../loaded/pos/sales/eid:PWNED?x=1", "email": "x.y@example.com"}
    assert till.post("/v1/contacts", hostile).status_code == 202
    till.post("/v1/receipts", make_receipt("GOOD-1"))
    wait_for(lambda: "GOOD-1" in cloud.engage.receipts)
    wait_for(lambda: any(r.get("recordKey") for r in till.get("/v1/dead-letters").json()))
    for request in cloud.requests:
        if request.headers.get("Apikey"):
            assert request.path.startswith("/api/v2/"), request.path
        assert "PWNED" not in request.path or request.api == "engage", request.path
    assert "PWNED" not in json.dumps(list(cloud.loaded.sales))


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


def p99_of_sales(till, count: int, prefix: str) -> float:
    took = []
    for n in range(count):
        started = time.perf_counter()
        answer = till.post("/v1/receipts", make_receipt(f"{prefix}-{n:04d}"))
        took.append(time.perf_counter() - started)
        assert answer.status_code == 202, answer.text
    return statistics.quantiles(took, n=100)[98]


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
    with agent.outbox.read() as conn:
        rows = conn.execute("SELECT error_id, times FROM quarantine").fetchall()
    assert [tuple(r) for r in rows] == [(ids.pop(), 30)]
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
    with agent.outbox.read() as conn:
        (kept,) = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(sealed_body)), 0) FROM quarantine"
        ).fetchone()
        (counted,) = conn.execute(
            "SELECT value FROM counters WHERE name = 'quarantine_bytes'"
        ).fetchone()
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
