"""Simulated webhook receiver over loopback: signature, idempotency key, duplicates."""

from __future__ import annotations

import json

from agent.sandbox import SandboxCloud
from agent.sandbox.webhook import sign


def deliver(http, cloud: SandboxCloud, body: bytes, key: str | None, secret: str = ""):
    headers = {
        "Content-Type": "application/json",
        "X-Till-Signature": sign(secret or "sandbox-webhook-secret", body),
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    return http.post(f"{cloud.url}/webhook/hook", data=body, headers=headers)


def test_webhook_records_a_signed_delivery_once_per_key(sandbox: SandboxCloud, http):
    body = json.dumps({"kind": "receipt"}).encode()
    assert deliver(http, sandbox, body, "K-1").status_code == 200
    again = deliver(http, sandbox, body, "K-1")
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert len(sandbox.webhook.received) == 1
    assert sandbox.webhook.received[0].json == {"kind": "receipt"}
    assert sandbox.webhook.duplicates == 1


def test_webhook_refuses_a_bad_signature(sandbox: SandboxCloud, http):
    assert deliver(http, sandbox, b"{}", "K-2", secret="wrong").status_code == 401
    assert sandbox.webhook.received == []


def test_webhook_requires_an_idempotency_key(sandbox: SandboxCloud, http):
    assert deliver(http, sandbox, b"{}", None).status_code == 400
