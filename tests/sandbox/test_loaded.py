"""Simulated Loaded-style analytics over loopback: OAuth2 tokens, sales by externalId, errorId."""

from __future__ import annotations

from typing import Any

import pytest

from agent.sandbox import SandboxCloud

CREDENTIALS = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}


def token_reply(http, cloud: SandboxCloud, prefix: str = "", **form: str) -> Any:
    data = {"grant_type": "client_credentials", **CREDENTIALS, **form}
    return http.post(f"{cloud.url}{prefix}/oauth/token", data=data)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_loaded_token_expires_and_refreshes(clocked: SandboxCloud, clock, http):
    reply = token_reply(http, clocked).json()
    assert reply["expires_in"] == 60
    url = f"{clocked.url}/pos/sales/eid:S-1"
    assert http.put(url, json={"total": 1}, headers=bearer(reply["access_token"])).ok
    clock.now += 61
    expired = http.put(url, json={"total": 2}, headers=bearer(reply["access_token"]))
    assert expired.status_code == 401
    assert expired.json()["errorId"]
    fresh = token_reply(
        http, clocked, grant_type="refresh_token", refresh_token=reply["refresh_token"]
    ).json()
    assert http.put(url, json={"total": 2}, headers=bearer(fresh["access_token"])).ok
    reused = token_reply(
        http, clocked, grant_type="refresh_token", refresh_token=reply["refresh_token"]
    )
    assert reused.status_code == 400


def test_loaded_bad_client_secret_is_401_with_error_id(sandbox: SandboxCloud, http):
    reply = token_reply(http, sandbox, client_secret="wrong")
    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"
    assert reply.json()["errorId"]


def test_loaded_unknown_token_is_401(sandbox: SandboxCloud, http):
    response = http.put(f"{sandbox.url}/pos/sales/eid:S-1", json={}, headers=bearer("nope"))
    assert response.status_code == 401


@pytest.mark.parametrize("prefix", ["", "/loaded"])
def test_loaded_put_by_external_id_replaces(prefix: str, sandbox: SandboxCloud, http):
    token = token_reply(http, sandbox, prefix).json()["access_token"]
    url = f"{sandbox.url}{prefix}/pos/sales/eid:S%2F7"
    first = http.put(url, json={"total": 1, "lines": 2}, headers=bearer(token))
    second = http.put(url, json={"total": 3}, headers=bearer(token))
    assert (first.status_code, second.status_code) == (201, 200)
    assert sandbox.loaded.sales == {"S/7": {"total": 3, "externalId": "S/7"}}
    assert http.get(url, headers=bearer(token)).json()["total"] == 3


def test_loaded_post_upserts_by_the_body_external_id(sandbox: SandboxCloud, http):
    token = token_reply(http, sandbox).json()["access_token"]
    url = f"{sandbox.url}/pos/sales"
    http.post(url, json={"externalId": "S-2", "total": 1}, headers=bearer(token))
    http.post(url, json={"externalId": "S-2", "total": 5}, headers=bearer(token))
    assert sandbox.loaded.sales["S-2"]["total"] == 5


def test_loaded_every_error_has_a_unique_error_id(sandbox: SandboxCloud, http):
    token = token_reply(http, sandbox).json()["access_token"]
    errors = [
        http.post(f"{sandbox.url}/pos/sales", json=[1], headers=bearer(token)),
        http.put(f"{sandbox.url}/pos/sales/eid:{'x' * 256}", json={}, headers=bearer(token)),
        http.get(f"{sandbox.url}/pos/sales/eid:none", headers=bearer(token)),
        http.get(f"{sandbox.url}/pos/unknown", headers=bearer(token)),
        token_reply(http, sandbox, grant_type="password"),
    ]
    assert [e.status_code for e in errors] == [400, 400, 404, 404, 400]
    ids = {e.json()["errorId"] for e in errors}
    assert len(ids) == len(errors)
