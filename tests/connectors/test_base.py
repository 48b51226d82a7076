"""The one status table, Retry-After forms, error ids, redaction, the Session and profiles."""

from __future__ import annotations

import email.utils
import inspect
import re
import time

import pytest
import requests

from agent.connectors import KINDS, REGISTRY, build
from agent.connectors.base import (
    EXCERPT_CHARS,
    Options,
    SendResult,
    TimeoutSession,
    cloud_error_id,
    excerpt,
    raise_for_response,
    retry_after_seconds,
)
from agent.core.config import TAKES_VALUES, CloudKind
from agent.core.errors import (
    AuthError,
    ConfigError,
    RejectedError,
    RetryableError,
    ThrottledError,
)
from tests.connectors.conftest import closed_port, destination, read_secret


def response(status: int, body: str = "", **headers: str) -> requests.Response:
    """A real requests.Response as the adapter would build it (no network needed)."""
    built = requests.Response()
    built.status_code = status
    built._content = body.encode("utf-8")
    built.headers.update(headers)
    built.encoding = "utf-8"
    return built


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int):
    raise_for_response(response(status), connector="x")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (408, RetryableError),
        (500, RetryableError),
        (502, RetryableError),
        (503, RetryableError),
        (504, RetryableError),
        (401, AuthError),
        (403, AuthError),
        (400, RejectedError),
        (404, RejectedError),
        (409, RejectedError),
        (422, RejectedError),
    ],
)
def test_the_status_table(status: int, error: type[Exception]):
    with pytest.raises(error) as raised:
        raise_for_response(response(status, '{"errorId": "e-1"}'), connector="x")
    assert type(raised.value) is error
    assert raised.value.status == status  # type: ignore[attr-defined]
    assert raised.value.cloud_error_id == "e-1"  # type: ignore[attr-defined]


def test_429_with_seconds():
    with pytest.raises(ThrottledError) as raised:
        raise_for_response(response(429, **{"Retry-After": "7"}), connector="x")
    assert raised.value.retry_after_seconds == 7


def test_429_with_an_http_date():
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    with pytest.raises(ThrottledError) as raised:
        raise_for_response(response(429, **{"Retry-After": when}), connector="x")
    assert 100 <= raised.value.retry_after_seconds <= 121


def test_429_without_retry_after_waits_a_minute():
    with pytest.raises(ThrottledError) as raised:
        raise_for_response(response(429), connector="x")
    assert raised.value.retry_after_seconds == 60


def test_503_with_retry_after_is_throttled_and_without_it_retryable():
    with pytest.raises(ThrottledError):
        raise_for_response(response(503, **{"Retry-After": "3"}), connector="x")
    with pytest.raises(RetryableError) as raised:
        raise_for_response(response(503), connector="x")
    assert not isinstance(raised.value, ThrottledError)


def test_retry_after_garbage_is_none():
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"errorId": "abc"}', "abc"),
        ('{"error": {"errorId": "nested"}}', "nested"),
        ('{"errorCode": "MultipleMatches", "message": "..."}', "MultipleMatches"),
        ('{"error": "Too Many Requests"}', "Too Many Requests"),
        ("not json", None),
        ("[1, 2]", None),
        # a cloud's words are not an id: a person's name, an address, markup stay out
        ('{"error": "Anna Andersson, Storgatan 12"}', None),
        ('{"errorId": "anna@example.com"}', None),
        ('{"error": "<script>alert(1)</script>"}', None),
        ('{"code": "E\\u001b[31m"}', None),
    ],
)
def test_cloud_error_id(body: str, expected: str | None):
    assert cloud_error_id(body) == expected


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        (
            '{"errorCode": "InvalidEmailAddress", "message": "Anna Andersson, Storgatan 12"}',
            '{"errorCode": "InvalidEmailAddress", "message": "[text]"}',
        ),
        ('{"name": "NoSuchContact"}', '{"name": "NoSuchContact"}'),
        ('{"name": "Anna"}', '{"name": "[text]"}'),
        ('{"errors": [{"field": "email", "code": "anna@example.com"}]}',
         '{"errors": [{"field": "email", "code": "[text]"}]}'),
        ('{"status": 400, "id": 46701234567}', '{"status": 400, "id": "[number]"}'),
        ('{"code": "0701234567"}', '{"code": "[text]"}'),
        ("<html><b>Anna</b></html>", "(not JSON, 24 bytes)"),
        ("[" * 100_000, "(not JSON, 100000 bytes)"),
        ("", ""),
    ],
)  # fmt: skip
def test_the_excerpt_keeps_only_what_is_provably_no_ones(body, kept):
    assert excerpt(body) == kept


def test_the_excerpt_is_redacted_and_short():
    body = '{"email": "anna@example.com", "mobilePhone": "+46701234567", "apikey": "k"}' * 20
    kept = excerpt(body)
    assert len(kept) <= EXCERPT_CHARS
    assert "anna@" not in kept
    assert "46701234567" not in kept
    assert '"k"' not in kept


def test_the_session_always_has_a_timeout_and_never_retries():
    session = TimeoutSession(0.5)
    try:
        adapter = session.get_adapter("http://127.0.0.1/")
        assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            session.get(f"http://127.0.0.1:{closed_port()}/", timeout=None)
        assert time.monotonic() - started < 5
    finally:
        session.close()


def test_build_lists_every_problem(http: requests.Session):
    bad = destination(
        "engage",
        "http://127.0.0.1:9/",
        api_version="v9",
        phone_format="x",
        typo=1,
        api_key_secret="missing",
    )
    with pytest.raises(ConfigError) as raised:
        build(bad, http, read_secret)
    text = "; ".join(raised.value.problems)
    for key in ("api_version", "phone_format", "typo", "api_key_secret"):
        assert key in text


def test_build_an_unknown_kind(http: requests.Session):
    with pytest.raises(ConfigError):
        build(destination("nope", "http://127.0.0.1:9/"), http, read_secret)


def test_a_profile_switches_url_and_secret():
    dest = destination(
        "engage",
        "https://prod.example/",
        profile="test",
        profiles={"test": {"base_url": "https://test.example/", "api_key_secret": "t-key"}},
    )
    opts = Options(dest, {"t-key": "secret-t"}.__getitem__)
    assert opts.base_url == "https://test.example/"
    assert opts.secret("api_key_secret", "engage-api-key") == "secret-t"
    opts.finish()


def test_no_profile_uses_the_top_level():
    dest = destination("engage", "https://prod.example/", profiles={"test": {"base_url": "x"}})
    opts = Options(dest, read_secret)
    assert opts.base_url == "https://prod.example/"


def test_an_unknown_profile_is_a_problem():
    dest = destination("engage", "https://prod.example/", profile="staging", profiles={})
    with pytest.raises(ConfigError, match="staging"):
        Options(dest, read_secret).finish()


def test_send_result_defaults():
    assert SendResult() == SendResult(None, None, None, None)


# -- issue 14: what goes into a header or a URL path is made safe for it ------------------


@pytest.mark.parametrize("key", ["S042-Łódź-000124", " LEADING-SPACE", "東京\r\nX: y", "a\u202eb"])
def test_the_idempotency_header_is_an_ascii_digest_of_any_key(key):
    from agent.connectors.base import idempotency_header

    value = idempotency_header(key)
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert value == idempotency_header(key)  # the same on every retry
    assert value != idempotency_header(key + "x")


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("S042", True),
        ("S 042", True),
        (" S042", False),
        ("S042 ", False),
        ("S042-Łódź", False),
        ("S042\r\nX: y", False),
        ("", False),
        ("a\u202eb", False),
    ],
)
def test_only_visible_ascii_goes_into_a_header_as_it_is(value, kept):
    from agent.connectors.base import header_value

    assert (header_value(value) == value) is kept


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        (
            "../../../loaded/pos/sales/eid:PWNED?x=1",
            "..%2F..%2F..%2Floaded%2Fpos%2Fsales%2Feid%3APWNED%3Fx%3D1",
        ),
        ("a#b%c", "a%23b%25c"),
        ("Łódź", "%C5%81%C3%B3d%C5%BA"),
        ("..x", "..x"),
    ],
)
def test_an_id_in_a_url_is_one_percent_quoted_segment(value, segment):
    from agent.connectors.base import path_segment

    assert path_segment(value, connector="c") == segment


@pytest.mark.parametrize("value", ["", ".", "..", "..."])
def test_an_id_of_dots_only_names_nothing_and_is_the_items_problem(value):
    from agent.connectors.base import path_segment
    from agent.core.errors import UnsendableError

    with pytest.raises(UnsendableError):
        path_segment(value, connector="c")


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_a_kind_declares_what_its_connector_can_do(kind: str):
    """What app and config ask a kind (its KIND) is what its connector class really has."""
    module = REGISTRY[kind]
    declared: CloudKind = module.KIND
    create = inspect.signature(module.create)
    connector = getattr(module, create.return_annotation)
    assert declared.name == kind
    assert declared.takes <= TAKES_VALUES
    assert declared.amends in ("replace", "difference")
    assert declared.requests_per_second > 0
    assert declared.rate_window_seconds > 0
    assert declared.sends == hasattr(connector, "send")
    assert declared.contact_source == hasattr(connector, "fetch_contact_changes")
    assert declared.finds_contacts == hasattr(connector, "find_contact_id")
    assert declared.writes_in_bulk == hasattr(connector, "bulk_write")
    assert declared.stores_tokens == ("vault" in create.parameters)
    assert KINDS[kind] is declared
