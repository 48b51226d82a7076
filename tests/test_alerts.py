"""Alert digests: one message per digest over a real local SMTP server and a webhook."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from agent.core.config import AlertsSettings
from agent.ledger import DeadLetters
from agent.ops.alerts import Alerts
from tests.conftest import free_port
from tests.test_dead_letters import rejected_rig
from tests.test_privacy_scan import PLANTED


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(envelope.content.decode("utf-8", "replace"))
        return "250 OK"


@pytest.fixture
def smtp():
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


@pytest.fixture
def hook():
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received, f"http://127.0.0.1:{server.server_port}/alerts"
    server.shutdown()
    server.server_close()


def alerts_for(agent, **settings) -> Alerts:
    return Alerts(AlertsSettings(**settings), DeadLetters(agent.outbox), agent.health, ("S1", "T1"))


def test_one_digest_per_batch_of_dead_letters_by_mail(start_agent, smtp):
    mailbox, port = smtp
    agent, *_ = rejected_rig(start_agent)
    alerts = alerts_for(
        agent,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_from="till@example.com",
        smtp_to=("ops@example.com",),
    )
    assert alerts.send_digest() is True
    assert alerts.send_digest() is False  # nothing new: nothing sent
    (message,) = mailbox.messages
    assert "1 dead letter" in message
    assert "R-DEAD" in message
    assert "e-1" in message
    assert PLANTED["email"] not in message


def test_digest_by_webhook_and_a_halted_destination_told_once(start_agent, hook):
    received, url = hook
    agent, *_ = rejected_rig(start_agent)
    agent.health.report("destination:loaded", "failing", "credentials refused (401)")
    alerts = alerts_for(agent, webhook_url=url)
    assert alerts.send_digest() is True
    assert alerts.send_digest() is False
    (body,) = received
    assert body["halted"] == ["loaded"]
    assert [d["recordKey"] for d in body["deadLetters"]] == ["R-DEAD"]


def test_a_failed_send_keeps_the_dead_letters_for_the_next_digest(start_agent):
    agent, *_ = rejected_rig(start_agent)
    alerts = alerts_for(
        agent,
        smtp_host="127.0.0.1",
        smtp_port=free_port(),
        smtp_from="a@example.com",
        smtp_to=("b@example.com",),
    )
    with pytest.raises(ConnectionRefusedError):
        alerts.send_digest()
    assert len(DeadLetters(agent.outbox).unnotified()) == 1


def test_no_channel_configured_sends_nothing(start_agent):
    agent, *_ = rejected_rig(start_agent)
    assert alerts_for(agent).send_digest() is False
    assert len(DeadLetters(agent.outbox).unnotified()) == 1
