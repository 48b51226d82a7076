"""The admin routes under /_sandbox/, which no fault touches."""

from __future__ import annotations

import base64

import pytest
import requests

from agent.sandbox import SandboxCloud
from tests.sandbox.test_engage import HEADERS, receipt


def test_admin_faults_route_applies_switches(sandbox: SandboxCloud, http):
    answer = http.post(
        f"{sandbox.url}/_sandbox/faults",
        json=[{"action": "fail_next", "status": 503, "count": 1, "api": "engage"}],
    )
    assert answer.json() == {"status": "ok", "applied": 1}
    url = f"{sandbox.url}/api/v2/contacts/count"
    assert http.get(url, headers=HEADERS).status_code == 503
    assert http.get(url, headers=HEADERS).status_code == 200


def test_admin_faults_route_refuses_unknown_switches(sandbox: SandboxCloud, http):
    url = f"{sandbox.url}/_sandbox/faults"
    assert http.post(url, json={"action": "explode"}).status_code == 400
    assert http.post(url, json={"action": "fail_next", "bogus": 1}).status_code == 400


def test_admin_is_reachable_while_the_public_port_is_offline(sandbox: SandboxCloud, http):
    http.post(f"{sandbox.url}/_sandbox/faults", json={"action": "set_offline", "mode": "refused"})
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sandbox.url}/_sandbox/state", timeout=5)
    admin = sandbox.admin_url
    assert http.post(f"{admin}/_sandbox/faults", json={"action": "clear"}).ok
    assert http.get(f"{sandbox.url}/_sandbox/state").ok


def test_admin_admin_routes_ignore_faults(sandbox: SandboxCloud, http):
    sandbox.faults.fail_next(500, count=3)
    sandbox.faults.set_auth_failure("engage")
    assert http.get(f"{sandbox.url}/_sandbox/state").status_code == 200


def test_admin_requests_state_and_reset(sandbox: SandboxCloud, http):
    http.post(f"{sandbox.url}/api/v2/receipts", json=receipt(), headers=HEADERS)
    recorded = http.get(f"{sandbox.url}/_sandbox/requests").json()
    assert recorded[0]["api"] == "engage"
    assert recorded[0]["status"] == 202
    assert recorded[0]["headers"]["Apikey"] == "sandbox-engage-key"
    assert b"R-1" in base64.b64decode(recorded[0]["body"])
    state = http.get(f"{sandbox.url}/_sandbox/state").json()
    assert state["engage"]["receipts"] == 1
    http.post(f"{sandbox.url}/_sandbox/reset")
    assert sandbox.engage.receipts == {}
    assert [r.path for r in sandbox.requests] == ["/_sandbox/reset"]


def test_every_request_is_recorded_with_its_answer(sandbox: SandboxCloud, http):
    sandbox.faults.fail_next(502)
    http.post(f"{sandbox.url}/api/v2/receipts?x=1", json=receipt(), headers=HEADERS)
    http.get(f"{sandbox.url}/nowhere")
    first, second = sandbox.requests
    assert (first.method, first.api, first.status, first.query) == (
        "POST",
        "engage",
        502,
        {"x": "1"},
    )
    assert first.json["uniqueReceiptId"] == "R-1"
    assert (second.api, second.status) == ("unknown", 404)
    sandbox.clear_requests()
    assert sandbox.requests == []
