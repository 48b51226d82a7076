"""Network and cloud faults end to end (failure matrix rows 27, 29, 35): nothing counts as sent
unless the cloud really took it, and a resend is recognised by the cloud."""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent import connectors
from agent.connectors.base import call
from agent.core.errors import RetryableError
from agent.sandbox import SandboxCloud
from tests.conftest import Till, base_config, make_receipt, merged, wait_for
from tests.test_delivery import sales_requests


@pytest.fixture
def cloud() -> Iterator[SandboxCloud]:
    sandbox = SandboxCloud(seed=5).serve()
    yield sandbox
    sandbox.stop()


def status_of(till: Till, name: str) -> dict[str, Any]:
    destinations = till.get("/v1/status").json()["destinations"]
    return next(d for d in destinations if d["name"] == name)


def waiting(state: dict[str, Any]) -> int:
    """Items not yet delivered: ready, in the window of sends (a lost answer's resend waits
    there), or set aside. `depth` alone is only the ready ones."""
    return int(state["depth"] + state["inFlight"] + state["setAside"])


def _delivering(start_agent, tmp_path, engage_url: str, loaded_url: str):
    overrides = {
        "delivery": {"enabled": True, "backoff_initial_seconds": 0.1, "backoff_max_seconds": 0.5},
        "destinations": {"engage": {"base_url": engage_url}, "loaded": {"base_url": loaded_url}},
    }
    return start_agent(merged(base_config(tmp_path), overrides))


def test_an_answer_lost_after_the_cloud_committed_is_resent_and_kept_once(
    start_agent, tmp_path, cloud
):
    """Row 27: the cloud did the work but the answer never arrived; the resend is the same."""
    _, till = _delivering(start_agent, tmp_path, cloud.url, cloud.url + "/loaded")
    ids = [f"L-{n}" for n in range(6)]
    for n, receipt_id in enumerate(ids):
        if n == 1:  # the first went through (Loaded's token is fetched): now answers get lost
            wait_for(lambda: "L-0" in cloud.loaded.orders and "L-0" in cloud.engage.receipts)
            cloud.faults.lost_next(3, api="engage")
            cloud.faults.lost_next(3, api="loaded")
        receipt = make_receipt(receipt_id)  # a member number: no lookup comes before the receipt
        receipt["contact"] = {"matchKey": "M-0001", "matchKeyType": "memberNumber"}
        assert till.post("/v1/receipts", receipt).status_code == 202
    wait_for(
        lambda: set(cloud.engage.receipts) == set(ids) and set(cloud.loaded.orders) == set(ids)
    )
    wait_for(lambda: all(waiting(status_of(till, d)) == 0 for d in ("engage", "loaded")))
    posts = [r for r in cloud.requests if r.api == "engage" and r.path.endswith("/receipts")]
    assert len(posts) > len(ids)  # lost answers were followed by resends ...
    assert cloud.engage.duplicate_receipts == len(posts) - len(ids)  # ... the cloud knew again
    keys: dict[str, set[str]] = defaultdict(set)
    for request in sales_requests(cloud, ok_only=False):
        if request.method != "GET":  # a GET reads an order back (the probe, a create's retry)
            keys[request.json["externalId"]].add(request.headers["Idempotency-Key"])
    assert all(len(sent) == 1 for sent in keys.values())  # one key per sale, resends included
    writes = [r for r in sales_requests(cloud, ok_only=False) if r.method != "GET"]
    assert len(writes) > len(ids)  # it did resend


class _Portal(BaseHTTPRequestHandler):
    """A captive portal: every POST is redirected to a login page that answers 200."""

    posts = 0

    def do_POST(self) -> None:
        type(self).posts += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(302)
        self.send_header("Location", "/login")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        body = b"<html>Sign in to the shop Wi-Fi</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def portal() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Portal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_redirect_to_a_login_page_is_not_a_delivery(start_agent, tmp_path, portal):
    """Row 35: a 302 to a page that answers 200 (a captive portal) must not count as sent."""
    _, till = _delivering(start_agent, tmp_path, portal, portal)
    assert till.post("/v1/receipts", make_receipt("P-1")).status_code == 202
    wait_for(lambda: _Portal.posts >= 2)  # tried, and tried again
    for destination in ("engage", "loaded"):
        state = status_of(till, destination)
        assert state["sent"] == 0
        assert waiting(state) == 1
    states = till.get("/v1/receipts/P-1").json()["destinations"]
    assert all(d["state"] != "delivered" for d in states), states
    assert till.get("/v1/dead-letters").json() == []


@pytest.fixture
def not_tls() -> Iterator[str]:
    """A port that answers a TLS hello with plain text at once: the handshake fails."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}/"
    stop.set()
    thread.join(5)
    listener.close()


@pytest.mark.parametrize("kind", ["dns", "tls"])
def test_dns_and_tls_failures_are_transient_and_keep_the_queue(
    start_agent, tmp_path, request, kind
):
    """Row 29: classified as transient (offline, retried), never dead-lettered."""
    target = (
        "http://till-agent-test.invalid/" if kind == "dns" else request.getfixturevalue("not_tls")
    )
    _, till = _delivering(start_agent, tmp_path, target, target)
    assert till.post("/v1/receipts", make_receipt("N-1")).status_code == 202
    wait_for(lambda: status_of(till, "engage")["state"] == "offline")
    wait_for(lambda: status_of(till, "engage")["failed"] >= 2)  # retried
    assert till.get("/v1/dead-letters").json() == []
    state = status_of(till, "engage")
    assert waiting(state) == 1


def test_the_session_never_follows_a_redirect(portal):
    """Whatever a connector does with a 2xx body, a redirected POST never reaches one."""
    session = connectors.make_session("TillAgent/test", timeout_seconds=5)
    try:
        with pytest.raises(RetryableError) as caught:
            call(session, "POST", portal + "sales", connector="loaded", json={"id": 1})
    finally:
        session.close()
    assert caught.value.status == 302


def test_health_turns_red_when_nothing_is_delivered_for_too_long(start_agent, tmp_path):
    """Row 47: an agent that cannot deliver must not look healthy, nor a dead worker."""
    overrides = {
        "delivery": {"enabled": True, "backoff_initial_seconds": 0.1, "stalled_alarm_seconds": 1},
    }
    agent, till = start_agent(merged(base_config(tmp_path), overrides))  # clouds refuse
    agent.scheduler.run_now("backlog")
    assert till.get("/v1/health").status_code == 200  # nothing waits yet
    assert till.post("/v1/receipts", make_receipt("S-1")).status_code == 202
    wait_for(lambda: status_of(till, "engage")["failed"] >= 1)
    time.sleep(1.1)
    agent.scheduler.run_now("backlog")
    assert till.get("/v1/health").status_code == 503
    components = {c["name"]: c for c in till.get("/v1/status").json()["components"]}
    assert components["backlog:engage"]["state"] == "failing"
    assert "nothing delivered" in components["backlog:engage"]["detail"]


def test_health_turns_red_when_a_delivery_worker_has_stopped(start_agent, tmp_path):
    agent, till = start_agent(merged(base_config(tmp_path), {"delivery": {"enabled": True}}))
    agent.scheduler.run_now("backlog")
    assert till.get("/v1/health").status_code == 200
    worker = next(d for d in agent.dispatchers if d.destination == "loaded")
    worker.stop(5.0)
    agent.scheduler.run_now("backlog")
    assert till.get("/v1/health").status_code == 503
    components = {c["name"]: c for c in till.get("/v1/status").json()["components"]}
    assert components["backlog:loaded"]["detail"] == "its delivery worker has stopped"
    assert components["backlog:engage"]["state"] == "ok"
