"""One suite for every registered connector, against the sandbox cloud over loopback."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import requests

from agent.connectors import REGISTRY, build, make_session
from agent.connectors.base import ContactSource, Sender
from agent.core.errors import AuthError, RejectedError, RetryableError, ThrottledError
from agent.core.models import Contact, OutboundMessage
from tests.connectors.conftest import closed_port, destination, read_secret
from tests.connectors.test_engage import receipt

SENDERS = ("engage", "loaded", "webhook")
SOURCES = ("engage", "lightspeed")
API = {"engage": "engage", "loaded": "loaded", "webhook": "webhook", "lightspeed": "lightspeed"}
EXTRA: dict[str, dict[str, Any]] = {"loaded": {"client_id": "sandbox-client"}}


def test_every_registered_kind_is_in_this_suite():
    assert set(SENDERS) | set(SOURCES) == set(REGISTRY)


def base_url(kind: str, root: str) -> str:
    return f"{root}/webhook/{kind}" if kind == "webhook" else root


def make(kind: str, root: str, http: requests.Session) -> Any:
    return build(destination(kind, base_url(kind, root), **EXTRA.get(kind, {})), http, read_secret)


def message(key: str) -> OutboundMessage:
    body = msgspec.structs.replace(
        receipt(matchKey="a@example.com", matchKeyType="email"), unique_receipt_id=key
    )
    return OutboundMessage(kind="receipt", idempotency_key=key, receipt=body)


def carries(request: Any, key: str) -> bool:
    """The idempotency key is in the path, a header or the JSON body of the request."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    return key in request.path or headers.get("idempotency-key") == key or key in str(request.json)


@pytest.mark.parametrize("kind", SENDERS)
def test_send_happy_path_with_the_idempotency_key(kind: str, sandbox: Any, http):
    sender: Sender = make(kind, sandbox.url, http)
    result = sender.send(message("R-HAPPY"))
    assert result.status is not None
    assert 200 <= result.status < 300
    assert any(carries(r, "R-HAPPY") for r in sandbox.requests)


@pytest.mark.parametrize("kind", SENDERS)
def test_probe_passes_with_good_credentials(kind: str, sandbox: Any, http):
    make(kind, sandbox.url, http).probe()


STATUSES: list[tuple[int, type[Exception]]] = [
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
]


@pytest.mark.parametrize("kind", SENDERS)
@pytest.mark.parametrize(("status", "error"), STATUSES)
def test_each_status_class(kind: str, status: int, error: type[Exception], sandbox: Any, http):
    sender: Sender = make(kind, sandbox.url, http)
    sender.send(message("R-WARM"))  # a Loaded token in hand, so the fault hits the send
    # Three: a 401 makes an OAuth connector renew its token (refresh, then a new grant) first.
    sandbox.faults.fail_next(status, count=3, api=API[kind])
    with pytest.raises(error) as raised:
        sender.send(message(f"R-{status}"))
    assert isinstance(raised.value, error)
    assert raised.value.status == status  # type: ignore[attr-defined]


def http_date(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


RETRY_AFTER: list[tuple[Callable[[], Any], float, float]] = [
    (lambda: 7, 7, 7),
    (lambda: http_date(120), 100, 121),
    (lambda: None, 60, 60),
]


@pytest.mark.parametrize("kind", SENDERS)
@pytest.mark.parametrize(("retry_after", "low", "high"), RETRY_AFTER)
def test_429(kind: str, retry_after: Callable[[], Any], low: float, high: float, sandbox, http):
    sender: Sender = make(kind, sandbox.url, http)
    sender.send(message("R-WARM"))
    sandbox.faults.fail_next(429, count=1, api=API[kind], retry_after=retry_after())
    with pytest.raises(ThrottledError) as raised:
        sender.send(message("R-429"))
    assert low <= raised.value.retry_after_seconds <= high


@pytest.mark.parametrize("kind", SENDERS)
def test_connection_refused_is_retryable(kind: str, http):
    sender: Sender = make(kind, f"http://127.0.0.1:{closed_port()}", http)
    with pytest.raises(RetryableError):
        sender.send(message("R-DOWN"))


def test_a_malformed_engage_reply_is_retryable(sandbox: Any, http):
    connector = make("engage", sandbox.url, http)
    sandbox.faults.malformed_next()
    with pytest.raises(RetryableError):
        connector.create_contact(Contact(email="m@example.com"))


def test_a_malformed_token_reply_is_retryable(sandbox: Any, http):
    connector = make("loaded", sandbox.url, http)
    sandbox.faults.malformed_next()
    with pytest.raises(RetryableError):
        connector.probe()


@pytest.mark.parametrize("kind", SOURCES)
def test_pagination_to_the_end(kind: str, sandbox: Any, http):
    sandbox.lightspeed.seed_customers(250)
    source: ContactSource = make(kind, sandbox.url, http)
    if kind == "engage":
        for n in range(5):
            source.create_contact(Contact(email=f"p{n}@example.com"))  # type: ignore[attr-defined]
    cursor, pages, more, seen = None, 0, True, 0
    while more and pages < 500:
        page = source.fetch_contact_changes(cursor, 100)
        cursor, more, pages, seen = page.cursor, page.has_more, pages + 1, seen + len(page.contacts)
    assert not more
    assert cursor is not None
    assert seen >= 5


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize(("status", "error"), [(500, RetryableError), (401, AuthError)])
def test_source_status_classes(kind: str, status: int, error: type[Exception], sandbox, http):
    source: ContactSource = make(kind, sandbox.url, http)
    sandbox.faults.fail_next(status, count=3, api=API[kind])
    with pytest.raises(error):
        source.fetch_contact_changes(None, 10)


@pytest.mark.parametrize("kind", SENDERS)
@pytest.mark.parametrize("mode", ["refused", "reset"])
def test_offline_is_retryable(kind: str, mode: str, sandbox: Any, http):
    sender: Sender = make(kind, sandbox.url, http)
    sandbox.faults.set_offline(mode)
    try:
        with pytest.raises(RetryableError):
            sender.send(message("R-OFF"))
    finally:
        sandbox.faults.set_offline(None)


@pytest.mark.parametrize("kind", SENDERS)
def test_a_truncated_reply_is_retryable(kind: str, sandbox: Any, http):
    sender: Sender = make(kind, sandbox.url, http)
    sender.send(message("R-WARM"))
    sandbox.faults.truncated_next(api=API[kind])
    with pytest.raises(RetryableError):
        sender.send(message("R-CUT"))


@pytest.mark.parametrize("kind", SENDERS)
def test_a_rejected_id_carries_status_and_excerpt(kind: str, sandbox: Any, http):
    sender: Sender = make(kind, sandbox.url, http)
    sandbox.faults.reject_ids(["R-NO"], status=422, api=API[kind])
    with pytest.raises(RejectedError) as raised:
        sender.send(message("R-NO"))
    assert raised.value.status == 422
    assert raised.value.body_excerpt
    assert len(raised.value.body_excerpt) <= 500


def test_lightspeed_429_with_an_http_date(sandbox: Any, http):
    source: ContactSource = make("lightspeed", sandbox.url, http)
    sandbox.faults.fail_next(429, api="lightspeed", retry_after="date", retry_after_seconds=30)
    with pytest.raises(ThrottledError) as raised:
        source.fetch_contact_changes(None, 10)
    assert 25 <= raised.value.retry_after_seconds <= 31


@pytest.mark.parametrize("kind", SENDERS)
def test_a_slow_cloud_times_out_as_retryable(kind: str, sandbox: Any):
    quick = make_session("TillAgent/test", timeout_seconds=0.05)
    try:
        sender: Sender = make(kind, sandbox.url, quick)
        sandbox.faults.set_latency(0.3, api=API[kind])
        with pytest.raises(RetryableError):
            sender.send(message("R-SLOW"))
    finally:
        sandbox.faults.set_latency(0.0, api=API[kind])
        quick.close()
