"""The signed webhook: a signature the receiver can verify, the idempotency key, the envelope."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import requests

from agent.connectors import webhook
from agent.core.models import Contact, OutboundMessage
from tests.connectors.conftest import destination, read_secret


def test_signature_is_verifiable():
    body = b'{"kind":"receipt"}'
    header = webhook.signature("k", body)
    assert header.startswith("sha256=")
    assert len(header) == 7 + 64
    assert webhook.verify("k", body, header)
    assert not webhook.verify("other", body, header)
    assert not webhook.verify("k", body + b" ", header)


def test_envelope_carries_the_key_and_the_contact():
    message = OutboundMessage(
        kind="contact",
        idempotency_key="L-1",
        local_id="L-1",
        contact=Contact(email="a@example.com"),
    )
    body = webhook.envelope(message)
    assert body == {
        "kind": "contact",
        "idempotencyKey": "L-1",
        "revision": 1,
        "contact": {"email": "a@example.com"},
        "localId": "L-1",
    }


def test_settings_secret_not_in_repr():
    settings = webhook.parse_settings(destination("webhook", "http://x/hook"), read_secret)
    assert "sandbox-webhook-secret" not in repr(settings)


def test_sandbox_receives_a_verifiable_post(sandbox: Any, http: requests.Session):
    dest = destination("webhook", f"{sandbox.url}/webhook/hook", name="hook")
    conn = webhook.create(webhook.parse_settings(dest, read_secret), http)
    conn.send(
        OutboundMessage(
            kind="contact", idempotency_key="L-2", contact=Contact(email="b@example.com")
        )
    )
    sent = [r for r in sandbox.requests if r.path == "/webhook/hook"][-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    # The header carries the key's SHA-256: any id, in any script, is ASCII there.
    assert headers["idempotency-key"] == hashlib.sha256(b"L-2").hexdigest()
    raw = sent.body if isinstance(sent.body, bytes) else str(sent.body).encode()
    assert webhook.verify("sandbox-webhook-secret", raw, headers["x-till-signature"])
    assert json.loads(raw)["idempotencyKey"] == "L-2"
