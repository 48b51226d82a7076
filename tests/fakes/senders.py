"""A scripted stand-in for a connector, for dispatch unit tests (end to end uses the sandbox)."""

from __future__ import annotations

from collections.abc import Callable

from agent.core import models

Outcome = Callable[[models.OutboundMessage], None]


class ScriptedSender:
    """Answers each send by the rule for its idempotency key, else by the default; records all."""

    name = "scripted"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.attempts: list[str] = []
        self.rules: dict[str, Outcome] = {}
        self.default: Outcome | None = None
        self.probe_error: Exception | None = None  # the cloud does not answer its probe either
        self.probes = 0

    def probe(self) -> None:
        self.probes += 1
        if self.probe_error is not None:
            raise self.probe_error

    def go_offline(self, error: Exception) -> None:
        """Every send and every probe fails with error (an outage)."""
        self.default = raising(error)
        self.probe_error = error

    def come_back(self) -> None:
        self.default = None
        self.probe_error = None

    def send(self, message: models.OutboundMessage) -> None:
        self.attempts.append(message.idempotency_key)
        rule = self.rules.get(message.idempotency_key, self.default)
        if rule is not None:
            rule(message)
        self.sent.append(message.idempotency_key)


def raising(error: Exception) -> Outcome:
    def outcome(message: models.OutboundMessage) -> None:
        raise error

    return outcome


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DirectoryResolver:
    """A contact directory like a CRM's: find by email or phone, create with a new id."""

    def __init__(self, *, lookup_match_keys: bool = True) -> None:
        self.lookup_match_keys = lookup_match_keys
        self.by_key: dict[str, str] = {}
        self.created: list[models.Contact] = []
        self.lookups = 0

    def find_contact_id(self, *, email: str | None, mobile_phone: str | None) -> str | None:
        self.lookups += 1
        return self.by_key.get(email or mobile_phone or "")

    def create_contact(self, contact: models.Contact) -> str:
        cloud_id = f"cloud-{len(self.created) + 1}"
        self.created.append(contact)
        self.by_key[contact.email or contact.mobile_phone or ""] = cloud_id
        return cloud_id


class IdResult:
    """What a connector answers to a contact create: the cloud's id."""

    def __init__(self, cloud_id: str) -> None:
        self.cloud_id = cloud_id
