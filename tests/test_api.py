"""The local API over loopback: every bad input gets its status and the one error shape."""

from __future__ import annotations

import logging
import socket

import pytest
import requests

from tests.conftest import make_receipt


def assert_error_shape(response: requests.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"code", "message", "errorId", "details"}
    assert error["errorId"].startswith("err_")
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return str(error["errorId"])


def test_receipt_with_token_is_queued_for_both_destinations(agent_till):
    _, till = agent_till
    response = till.post("/v1/receipts", make_receipt())
    assert response.status_code == 202
    assert response.json() == {
        "status": "queued",
        "uniqueReceiptId": "R-0001",
        "revision": 1,
        "destinations": ["engage", "loaded"],
        "warnings": [],
    }


def test_api_refuses_non_json_body_with_400(agent_till):
    _, till = agent_till
    response = till.session.post(
        till.url + "/v1/receipts",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert_error_shape(response, 400, "not_json")


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda r: r["items"][0].update(quantity=1.5), "$.items[0].quantity"),
        (lambda r: r.pop("currency"), "$"),
        (lambda r: r.update(createdDate="2026-11-23T10:00:00"), "$.createdDate"),
        (lambda r: r["items"][0].update(type="GIFT"), "$.items[0].type"),
        (lambda r: r.update(totalGrossPrice="ten"), "$.totalGrossPrice"),
        (lambda r: r.update(items=[]), "$.items"),
        (lambda r: r.update(unexpected=True), "$"),
        (lambda r: r["contact"].pop("matchKeyType"), "$.contact"),
    ],
    ids=[
        "float-quantity",
        "missing",
        "no-offset",
        "bad-enum",
        "money-text",
        "no-items",
        "unknown",
        "half-contact",
    ],
)
def test_api_answers_422_with_the_failing_path(agent_till, mutate, path):
    _, till = agent_till
    receipt = make_receipt()
    mutate(receipt)
    response = till.post("/v1/receipts", receipt)
    assert_error_shape(response, 422)
    assert response.json()["error"]["details"][0]["path"] == path


def test_api_refuses_json_that_is_not_an_object_with_422(agent_till):
    _, till = agent_till
    assert_error_shape(till.post("/v1/receipts", [1, 2, 3]), 422)


def test_api_refuses_missing_token_with_401(agent_till):
    _, till = agent_till
    response = requests.post(till.url + "/v1/receipts", json=make_receipt(), timeout=5)
    assert_error_shape(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_api_refuses_wrong_token_with_401(agent_till):
    _, till = agent_till
    headers = {"Authorization": "Bearer " + "x" * 43}
    response = requests.post(
        till.url + "/v1/receipts", json=make_receipt(), headers=headers, timeout=5
    )
    assert_error_shape(response, 401, "unauthorized")


@pytest.mark.parametrize("host", ["evil.example", "192.168.1.20:8765", "till.local", ""])
def test_api_refuses_foreign_host_with_403(agent_till, host):
    _, till = agent_till
    response = till.session.get(till.url + "/v1/status", headers={"Host": host}, timeout=5)
    assert_error_shape(response, 403, "forbidden_host")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]:8765", "LOCALHOST:1"])
def test_api_accepts_loopback_host_names(agent_till, host):
    _, till = agent_till
    response = till.session.get(till.url + "/v1/health", headers={"Host": host}, timeout=5)
    assert response.status_code == 200


def test_api_refuses_body_over_one_mebibyte_with_413(agent_till):
    _, till = agent_till
    receipt = make_receipt()
    receipt["items"][0]["articleName"] = "x" * (1024 * 1024)
    assert_error_shape(till.post("/v1/receipts", receipt), 413, "payload_too_large")


def test_api_refuses_chunked_body_over_limit_with_413(agent_till):
    _, till = agent_till
    chunks = (b"x" * 65536 for _ in range(20))  # 1.25 MiB, no Content-Length
    response = till.session.post(
        till.url + "/v1/receipts",
        data=chunks,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert_error_shape(response, 413, "payload_too_large")


def test_api_refuses_form_body_with_415(agent_till):
    _, till = agent_till
    response = till.session.post(till.url + "/v1/receipts", data={"a": "b"}, timeout=5)
    assert_error_shape(response, 415, "unsupported_media_type")


def test_api_unknown_route_and_wrong_method(agent_till):
    _, till = agent_till
    assert_error_shape(till.get("/v1/nothing"), 404, "not_found")
    response = till.session.delete(till.url + "/v1/receipts", timeout=5)
    assert_error_shape(response, 405, "method_not_allowed")
    # Changed deliberately (issue 19): GET /v1/receipts lists what is undelivered.
    assert response.headers["Allow"] == "GET, POST"


def test_api_unknown_receipt_is_404_in_the_error_shape(agent_till):
    _, till = agent_till
    assert_error_shape(till.get("/v1/receipts/NOPE"), 404, "not_found")


def test_api_error_id_is_in_the_log(agent_till, caplog):
    _, till = agent_till
    with caplog.at_level(logging.WARNING, logger="agent.api"):
        error_id = assert_error_shape(till.post("/v1/receipts", {"items": "x"}), 422)
    assert any(getattr(r, "errorId", None) == error_id for r in caplog.records)


def test_api_health_needs_no_token_and_shows_no_data(agent_till):
    _, till = agent_till
    response = requests.get(till.url + "/v1/health", timeout=5)
    assert response.status_code == 200
    assert set(response.json()) == {"status", "version"}


def test_api_garbage_request_line_does_not_kill_the_server(agent_till):
    _, till = agent_till
    host, port = till.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"\x00\xffGARBAGE\r\n\r\n")
        sock.recv(1024)
    assert till.get("/v1/health").status_code == 200


def test_api_binds_loopback_only(agent_till):
    agent, _ = agent_till
    assert agent.server.host == "127.0.0.1"


# -- issue 14: odd input gets a clear answer, never a 5xx ---------------------------------


@pytest.mark.parametrize("token", ["pä", "p\u00e4" * 40, "\u202e"])
def test_a_token_that_is_not_ascii_is_401_not_500(agent_till, token):
    agent, _ = agent_till
    answer = requests.get(
        agent.url + "/v1/status",
        headers={"Authorization": "Bearer " + token.encode("utf-8").decode("latin-1")},
        timeout=5,
    )
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("dead_letter", "status"),
    [("9" * 2000, 404), ("9" * 5000, 414), ("²", 404), ("12345678901234567890", 404), ("-1", 404)],
    ids=["2000-digits", "5000-digits", "superscript", "past-2**63", "negative"],
)
def test_a_dead_letter_id_that_names_nothing_is_4xx_not_500(agent_till, dead_letter, status):
    _, till = agent_till
    assert till.get(f"/v1/dead-letters/{dead_letter}").status_code == status
    assert till.post(f"/v1/dead-letters/{dead_letter}/retry", {}).status_code == status


def test_a_receipt_id_in_any_script_can_be_asked_for(agent_till):
    from urllib.parse import quote

    _, till = agent_till
    for receipt_id in ("S042-Łódź-000124", "東京-0001", " LEADING-SPACE"):
        assert till.post("/v1/receipts", make_receipt(receipt_id)).status_code == 202
        answer = till.get("/v1/receipts/" + quote(receipt_id, safe=""))
        assert answer.status_code == 200, receipt_id
        assert answer.json()["uniqueReceiptId"] == receipt_id


def test_a_path_past_any_route_is_414_in_the_one_shape(agent_till):
    _, till = agent_till
    answer = till.get("/v1/receipts/" + "x" * 5000)
    assert answer.status_code == 414
    assert answer.json()["error"]["code"] == "uri_too_long"


def test_listing_pages_through_every_undelivered_receipt_once(agent_till):
    _, till = agent_till  # delivery is off here: everything stays queued
    for n in range(7):
        assert till.post("/v1/receipts", make_receipt(f"R-{n:04d}")).status_code == 202
    seen, cursor = [], None
    while True:
        params = {"state": "undelivered", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = till.get("/v1/receipts", params=params).json()
        seen += [r["uniqueReceiptId"] for r in page["receipts"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [f"R-{n:04d}" for n in range(7)]
    empty = till.get("/v1/receipts", params={"state": "dead_lettered"}).json()
    assert empty == {"receipts": [], "next": None}
    later = till.get(
        "/v1/receipts", params={"state": "undelivered", "since": "2999-01-01T00:00:00Z"}
    )
    assert later.json()["receipts"] == []


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"state": "lost"},
        {"state": "undelivered", "since": "2026-11-01"},
        {"state": "undelivered", "limit": "0"},
        {"state": "undelivered", "limit": "501"},
        {"state": "undelivered", "cursor": "not-ours"},
        {"state": "undelivered", "colour": "red"},
    ],
)
def test_listing_refuses_a_bad_query_in_words(agent_till, query):
    _, till = agent_till
    assert_error_shape(till.get("/v1/receipts", params=query), 400, "bad_request")
