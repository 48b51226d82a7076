"""A generic signed webhook: the message as JSON, HMAC-SHA256 signed, with its idempotency key."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

import requests

from agent import __version__
from agent.connectors.base import (
    Options,
    ReadSecret,
    Sender,
    SendResult,
    call,
    idempotency_header,
    rate_limit,
    wire_json,
)
from agent.core.config import CloudKind, DestinationSettings
from agent.core.models import OutboundMessage, to_wire

log = logging.getLogger(__name__)

# What a webhook is to the agent: receipts and contacts; a changed receipt is sent whole again
# and replaces the earlier one. A receiver publishes no limit; we keep to 10 requests a second.
KIND = CloudKind(
    name="webhook",
    takes=frozenset({"receipts", "contacts"}),
    amends="replace",
    requests_per_second=10.0,
)
SIGNATURE_HEADER = "X-Till-Signature"


@dataclass(frozen=True)
class WebhookSettings:
    """Where to POST and the key that signs each body."""

    name: str
    url: str
    signing_key: str = field(repr=False)
    user_agent: str = f"TillAgent/{__version__}"


def parse_settings(destination: DestinationSettings, read_secret: ReadSecret) -> WebhookSettings:
    """WebhookSettings from [destinations.<name>] (profile applied); ConfigError if wrong."""
    opts = Options(destination, read_secret)
    settings = WebhookSettings(
        name=destination.name,
        url=opts.base_url,
        signing_key=opts.secret("signing_secret", "webhook-signing-secret"),
        user_agent=opts.text("user_agent", f"TillAgent/{__version__}"),
    )
    opts.finish()
    return settings


def signature(key: str, body: bytes) -> str:
    """The X-Till-Signature value: 'sha256=' + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(key: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(signature(key, body), header)


def envelope(message: OutboundMessage) -> dict[str, Any]:
    """The message as the receiver gets it: camelCase, money as exact JSON numbers."""
    body: dict[str, Any] = {
        "kind": message.kind,
        "idempotencyKey": message.idempotency_key,
        "revision": message.revision,
    }
    if message.receipt is not None:
        body["receipt"] = to_wire(message.receipt)
    if message.contact is not None:
        body["contact"] = to_wire(message.contact)
    if message.local_id is not None:
        body["localId"] = message.local_id
    if message.cloud_contact_id is not None:
        body["cloudContactId"] = message.cloud_contact_id
    return body


class WebhookConnector:
    """POSTs each message to one URL, signed; any 2xx is delivered."""

    def __init__(self, settings: WebhookSettings, http: requests.Session) -> None:
        self.name = settings.name
        self.settings = settings
        self._http = http

    def send(self, message: OutboundMessage) -> SendResult:
        """One signed POST; the Idempotency-Key header lets the receiver drop repeats. A later
        revision is a new message (it replaces the earlier one): its key carries `~r<n>`."""
        key = message.idempotency_key
        if message.revision > 1:
            key = f"{key}~r{message.revision}"
        return self._post(envelope(message), key)

    def probe(self) -> None:
        """A signed ping: a receiver that checks signatures answers 401 to a wrong key."""
        self._post({"kind": "ping"}, "ping")

    def _post(self, payload: dict[str, Any], key: str) -> SendResult:
        raw = wire_json(payload)  # compact, sorted keys, decimals exact: the bytes signed
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self.settings.user_agent,
            SIGNATURE_HEADER: signature(self.settings.signing_key, raw),
            "Idempotency-Key": idempotency_header(key),
        }
        response = call(
            self._http, "POST", self.settings.url, connector=self.name, data=raw, headers=headers
        )
        remaining, reset = rate_limit(response)
        return SendResult(response.status_code, None, remaining, reset)


def create(settings: WebhookSettings, http: requests.Session) -> WebhookConnector:
    """The connector for one webhook destination."""
    return WebhookConnector(settings, http)


_AS_SENDER: type[Sender] = WebhookConnector
