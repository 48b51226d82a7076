"""Lightspeed mapping: customer fields, deletions, the version cursor, rate-limit headers."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from agent.connectors import lightspeed
from agent.core.errors import AuthError, ConfigError, RejectedError
from agent.sandbox import SandboxCloud
from tests.connectors.conftest import destination, read_secret


def connector(http: requests.Session, base_url: str = "http://127.0.0.1:9/", **options: Any):
    dest = destination("lightspeed", base_url, **options)
    return lightspeed.create(lightspeed.parse_settings(dest, read_secret), http)


def test_customer_fields(http: requests.Session):
    contact = connector(http).source_contact(
        {
            "id": "u1",
            "first_name": "A",
            "last_name": "B",
            "email": "a@example.com",
            "mobile": "",
            "phone": "0701234567",
            "customer_code": "M-1",
            "deleted_at": None,
        }
    )
    assert (contact.contact_id, contact.mobile_phone, contact.member_number) == (
        "u1",
        "0701234567",
        "M-1",
    )
    assert not contact.deleted


def test_deleted_at_is_a_deletion(http: requests.Session):
    contact = connector(http).source_contact({"id": "u1", "deleted_at": "2026-01-01T00:00:00Z"})
    assert contact.deleted
    assert contact.email is None


def test_page_size_is_capped_at_200(http: requests.Session):
    with pytest.raises(ConfigError, match="page_size"):
        connector(http, page_size=500)


def test_a_cursor_that_is_no_version(http: requests.Session):
    with pytest.raises(RejectedError):
        connector(http).fetch_contact_changes("abc", 10)


def test_pages_to_the_end(sandbox: Any, http: requests.Session):
    sandbox.lightspeed.seed_customers(450)
    conn = connector(http, sandbox.url)
    cursor, seen, more = None, 0, True
    while more:
        page = conn.fetch_contact_changes(cursor, 200)
        seen += len(page.contacts)
        cursor, more = page.cursor, page.has_more
    assert seen == 450
    assert cursor is not None
    assert cursor.isdigit()
    sent = [r for r in sandbox.requests if r.path == "/api/2.0/customers"][-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["authorization"] == "Bearer sandbox-lightspeed-token"


def test_deletions_and_rate_limit_headers(sandbox: Any, http: requests.Session):
    ids = sandbox.lightspeed.seed_customers(3)
    conn = connector(http, sandbox.url)
    first = conn.fetch_page(None, 200)
    sandbox.lightspeed.delete_customer(ids[0])
    again = conn.fetch_contact_changes(first.page.cursor, 200)
    assert [c.deleted for c in again.contacts] == [True]
    assert first.rate_limit_remaining is not None
    assert conn.last_rate_limit[0] is not None


def test_the_list_asks_for_deleted_customers_too(sandbox: Any, http: requests.Session):
    sandbox.lightspeed.seed_customers(2)
    connector(http, sandbox.url).fetch_contact_changes(None, 200)
    sent = [r for r in sandbox.requests if r.path == "/api/2.0/customers"][-1]
    assert sent.query["deleted"] == "true"


def test_fetch_contact_by_id(sandbox: Any, http: requests.Session):
    ids = sandbox.lightspeed.seed_customers(3)
    conn = connector(http, sandbox.url)
    found = conn.fetch_contact(ids[0])
    assert found is not None
    assert found.contact_id == ids[0]
    assert found.mobile_phone == sandbox.lightspeed.customers[ids[0]]["phone"]
    assert sandbox.requests[-1].path == f"/api/2.0/customers/{ids[0]}"
    sandbox.lightspeed.delete_customer(ids[1])
    sandbox.lightspeed.forget_customer(ids[2])
    assert conn.fetch_contact(ids[1]) is None
    assert conn.fetch_contact(ids[2]) is None


def test_fetch_contact_errors_other_than_404_are_raised(sandbox: Any, http: requests.Session):
    from agent.core.errors import RetryableError

    ids = sandbox.lightspeed.seed_customers(1)
    conn = connector(http, sandbox.url)
    sandbox.faults.fail_next(500, api="lightspeed")
    with pytest.raises(RetryableError):
        conn.fetch_contact(ids[0])
    sandbox.faults.fail_next(400, api="lightspeed")
    with pytest.raises(RejectedError):
        conn.fetch_contact(ids[0])


def test_both_numbers_are_kept_and_blank_ones_are_none(http: requests.Session):
    conn = connector(http)
    both = conn.source_contact({"id": "u1", "mobile": "021 555 00001", "phone": "(09) 555 0001"})
    assert (both.mobile_phone, both.other_phone) == ("021 555 00001", "(09) 555 0001")
    landline = conn.source_contact({"id": "u2", "mobile": " ", "phone": "64-9-555-0002"})
    assert (landline.mobile_phone, landline.other_phone) == ("64-9-555-0002", None)
    neither = conn.source_contact({"id": "u3", "mobile": "", "phone": None, "email": ""})
    assert (neither.mobile_phone, neither.other_phone, neither.email) == (None, None, None)


# --- OAuth 2.0 with rotating refresh tokens ----------------------------------------------------


def oauth_connector(
    http: requests.Session, cloud: Any, vault: Any, refresh: str, **options: Any
) -> lightspeed.LightspeedConnector:
    """auth = "oauth" against the sandbox, the authorisation's refresh token configured."""
    secrets = {"lightspeed-client-secret": "sandbox-lightspeed-secret"}
    secrets["lightspeed-refresh-token"] = refresh
    dest = destination(
        "lightspeed", cloud.url, auth="oauth", client_id="sandbox-lightspeed-client", **options
    )
    return lightspeed.create(lightspeed.parse_settings(dest, secrets.__getitem__), http, vault)


def test_oauth_refreshes_rotates_and_seals_the_new_pair_before_use(sandbox, http, vault):
    sandbox.lightspeed.seed_customers(3)
    first = sandbox.lightspeed.issue_refresh_token()
    conn = oauth_connector(http, sandbox, vault, first)
    assert len(conn.fetch_contact_changes(None, 10).contacts) == 3
    token = sandbox.requests[0]
    assert (token.method, token.path) == ("POST", "/api/1.0/token")
    assert "grant_type=refresh_token" in token.body.decode()
    assert first not in sandbox.lightspeed.refresh_tokens  # revoked as the next was issued
    saved = vault.load_token("lightspeed")
    assert saved["refresh_token"] in sandbox.lightspeed.refresh_tokens
    used = {r.headers["Authorization"] for r in sandbox.requests if r.path.startswith("/api/2.0")}
    assert used == {f"Bearer {saved['access_token']}"}
    assert first not in vault.path.read_bytes().decode("latin-1")  # sealed, never in clear
    assert saved["refresh_token"] not in vault.path.read_bytes().decode("latin-1")


def test_oauth_keeps_its_access_token_until_shortly_before_expiry(http, vault):
    clock = {"now": 1_000_000.0}
    cloud = SandboxCloud(now=lambda: clock["now"], lightspeed_token_seconds=3600).serve()
    try:
        cloud.lightspeed.seed_customers(1)
        conn = oauth_connector(http, cloud, vault, cloud.lightspeed.issue_refresh_token())
        assert conn.tokens is not None
        for _ in range(3):
            conn.fetch_contact_changes(None, 10)
        assert cloud.lightspeed.refresh_requests == 1  # one token for many calls
        cloud.lightspeed.expire_access_tokens()  # revoked early: the 401 renews it once
        conn.fetch_contact_changes(None, 10)
        assert cloud.lightspeed.refresh_requests == 2
        statuses = [r.status for r in cloud.requests if r.path.startswith("/api/2.0")]
        assert statuses[-2:] == [401, 200]
    finally:
        cloud.stop()


def test_oauth_refreshes_before_the_margin_runs_out(http, vault):
    cloud = SandboxCloud(lightspeed_token_seconds=600).serve()  # within the margin at once
    try:
        refresh = cloud.lightspeed.issue_refresh_token()
        conn = oauth_connector(http, cloud, vault, refresh, token_margin_seconds=600)
        conn.fetch_contact_changes(None, 10)
        conn.fetch_contact_changes(None, 10)
        assert cloud.lightspeed.refresh_requests == 2  # due at once: renewed before use
        assert not [r for r in cloud.requests if r.status == 401]
    finally:
        cloud.stop()


def test_a_refused_refresh_token_halts_in_words_and_is_never_sent_again(sandbox, http, vault):
    spent = sandbox.lightspeed.issue_refresh_token()
    oauth_connector(http, sandbox, vault, spent).probe()  # spends it; the vault holds the next
    other = oauth_connector(http, sandbox, None, spent)  # a till without that vault: spent
    other.tokens._vault.durable = True  # type: ignore[union-attr]  # as the agent's vault
    for _ in range(3):
        with pytest.raises(AuthError) as refused:
            other.fetch_contact_changes(None, 10)
    assert refused.value.status == 400
    assert refused.value.cloud_error_id == "invalid_grant"
    assert "must authorise the app in Lightspeed again" in str(refused.value)
    assert "refresh_token_secret" in str(refused.value)
    assert (
        sandbox.lightspeed.refresh_requests == 2
    )  # the spent token was sent once, not three times


def test_a_newly_configured_refresh_token_replaces_the_saved_chain(sandbox, http, vault):
    oauth_connector(http, sandbox, vault, sandbox.lightspeed.issue_refresh_token()).probe()
    sandbox.lightspeed.refresh_tokens.clear()  # the authorisation was withdrawn
    fresh = sandbox.lightspeed.issue_refresh_token()  # and given again: a new refresh token
    sandbox.lightspeed.expire_access_tokens()
    oauth_connector(http, sandbox, vault, fresh).probe()
    assert fresh not in sandbox.lightspeed.refresh_tokens  # spent: the vault's chain was dropped
    assert vault.load_token("lightspeed")["refresh_token"] in sandbox.lightspeed.refresh_tokens


def test_personal_tokens_and_oauth_keys_do_not_mix(http):
    with pytest.raises(ConfigError, match="client_id: unknown key"):
        connector(http, client_id="x")
    with pytest.raises(ConfigError, match="client_id: required"):
        lightspeed.parse_settings(
            destination("lightspeed", "http://127.0.0.1:9/", auth="oauth"), lambda name: "s"
        )
