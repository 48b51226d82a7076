"""Simulated Loaded over loopback: OAuth2 tokens, and the categories/items/orders model held as
strictly as Loaded's documents: unknown item in an order, duplicate externalId, expired token,
refund signs, PATCH (never PUT) — each refused with a unique errorId."""

from __future__ import annotations

from typing import Any

import pytest

from agent.sandbox import SandboxCloud

CREDENTIALS = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}


def token_reply(http, cloud: SandboxCloud, path: str = "/oauth/token", **form: str) -> Any:
    data = {"grant_type": "client_credentials", **CREDENTIALS, **form}
    return http.post(f"{cloud.url}{path}", data=data)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def order(external_id: str = "O-1", item: str = "I-1", **extra: Any) -> dict[str, Any]:
    return {
        "externalId": external_id,
        "createdAt": "2026-11-23T10:00:00+01:00",
        "status": "Completed",
        "items": [{"externalId": item, "quantity": 1, "unitPrice": 5, "unitTax": 1}],
        "tenders": [{"externalId": "T-1", "type": "Cash", "invoiceAmount": 5}],
        **extra,
    }


@pytest.fixture
def authed(sandbox: SandboxCloud, http):
    """(post, get, patch) with a valid token, a category and an item made."""
    headers = bearer(token_reply(http, sandbox).json()["access_token"])

    def call(method: str, path: str, body: Any = None) -> Any:
        return http.request(method, f"{sandbox.url}/v1/pos/{path}", json=body, headers=headers)

    assert call("POST", "categories", {"externalId": "C-1", "name": "Food"}).status_code == 201
    item = {"externalId": "I-1", "categoryExternalId": "C-1", "name": "Test item", "price": 5}
    assert call("POST", "items", item).status_code == 201
    return call


def test_loaded_token_expires_and_refresh_tokens_are_single_use(clocked: SandboxCloud, clock, http):
    reply = token_reply(http, clocked).json()
    assert reply["expires_in"] == 60
    url = f"{clocked.url}/v1/pos/orders/eid:none"
    assert http.get(url, headers=bearer(reply["access_token"])).status_code == 404
    clock.now += 61
    expired = http.get(url, headers=bearer(reply["access_token"]))
    assert expired.status_code == 401
    assert expired.json()["errorId"]
    fresh = token_reply(
        http, clocked, grant_type="refresh_token", refresh_token=reply["refresh_token"]
    ).json()
    assert http.get(url, headers=bearer(fresh["access_token"])).status_code == 404
    reused = token_reply(
        http, clocked, grant_type="refresh_token", refresh_token=reply["refresh_token"]
    )
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"


def test_loaded_bad_client_secret_is_401_with_error_id(sandbox: SandboxCloud, http):
    reply = token_reply(http, sandbox, client_secret="wrong")
    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"
    assert reply.json()["errorId"]


def test_loaded_unknown_token_is_401(sandbox: SandboxCloud, http):
    response = http.post(f"{sandbox.url}/v1/pos/orders", json=order(), headers=bearer("nope"))
    assert response.status_code == 401


def test_an_order_naming_an_unknown_item_is_refused(authed):
    refused = authed("POST", "orders", order(item="I-NONE"))
    assert refused.status_code == 400
    assert "I-NONE" in refused.json()["message"]
    assert refused.json()["errorId"]


def test_an_item_in_an_unknown_category_is_refused(authed):
    item = {"externalId": "I-2", "categoryExternalId": "C-NONE", "name": "x", "price": 1}
    assert authed("POST", "items", item).status_code == 400


@pytest.mark.parametrize("kind", ["categories", "items", "orders"])
def test_a_duplicate_external_id_is_refused(authed, kind: str):
    bodies = {
        "categories": {"externalId": "C-1", "name": "Food"},
        "items": {"externalId": "I-1", "categoryExternalId": "C-1", "name": "x", "price": 5},
        "orders": order(),
    }
    if kind == "orders":
        assert authed("POST", "orders", order()).status_code == 201
    again = authed("POST", kind, bodies[kind])
    assert again.status_code == 409
    assert again.json()["errorId"]


def test_an_order_is_read_back_and_patched_by_position(authed, sandbox: SandboxCloud):
    two = order(items=[order()["items"][0], {**order()["items"][0], "quantity": 2}])
    assert authed("POST", "orders", two).status_code == 201
    patched = authed("PATCH", "orders/eid:O-1", {"items": [{"quantity": 3}]})
    assert patched.status_code == 200
    assert [i["quantity"] for i in sandbox.loaded.orders["O-1"]["items"]] == [3]
    assert sandbox.loaded.orders["O-1"]["items"][0]["externalId"] == "I-1"
    assert authed("GET", "orders/eid:O-1").json()["items"][0]["quantity"] == 3


def test_put_is_not_loaded_s_and_is_refused(authed):
    assert authed("POST", "orders", order()).status_code == 201
    assert authed("PUT", "orders/eid:O-1", order()).status_code == 405


def test_a_refund_needs_positive_prices_and_negative_tenders(authed):
    wrong = order("REF-1", status="Refunded")
    assert authed("POST", "orders", wrong).status_code == 400
    right = order("REF-1", status="Refunded")
    right["tenders"][0]["invoiceAmount"] = -5
    assert authed("POST", "orders", right).status_code == 201


def test_an_external_id_over_255_is_refused(authed):
    assert authed("POST", "categories", {"externalId": "x" * 256, "name": "y"}).status_code == 400


def test_loaded_every_error_has_a_unique_error_id(authed, sandbox: SandboxCloud, http):
    errors = [
        authed("POST", "orders", [1]),
        authed("POST", "orders", order(item="I-NONE")),
        authed("GET", "orders/eid:none"),
        authed("GET", "unknown"),
        token_reply(http, sandbox, grant_type="password"),
    ]
    assert [e.status_code for e in errors] == [400, 400, 404, 404, 400]
    ids = {e.json()["errorId"] for e in errors}
    assert len(ids) == len(errors)
