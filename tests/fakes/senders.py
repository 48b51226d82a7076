"""A scripted stand-in for a connector, for dispatch unit tests (end to end uses the sandbox)."""

from __future__ import annotations

from collections.abc import Callable

from agent import models

Outcome = Callable[[models.OutboundMessage], None]


class ScriptedSender:
    """Answers each send by the rule for its idempotency key, else by the default; records all."""

    name = "scripted"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.attempts: list[str] = []
        self.rules: dict[str, Outcome] = {}
        self.default: Outcome | None = None

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
