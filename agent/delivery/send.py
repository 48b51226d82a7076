"""The one place delivery calls a destination's connector: a send within the budget, the probe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from agent.core import models
from agent.core.errors import (
    CloudError,
    ConfigError,
    RejectedError,
    ThrottledError,
    UnsendableError,
)
from agent.delivery.budget import Budget
from agent.delivery.prepare import Preparer


class Sender(Protocol):
    """What dispatch needs of a connector (agent/connectors/base.py defines the full contract)."""

    name: str

    def send(self, message: models.OutboundMessage) -> object: ...

    def probe(self) -> None: ...


class NotSentError(Exception):
    """A send from the window not made: the destination paused while it waited its turn."""


class Send:
    """Sends a prepared message: the budget spent, its buyer resolved, then the connector."""

    def __init__(self, sender: Sender, budget: Budget, preparer: Preparer) -> None:
        self._sender = sender
        self._budget = budget
        self._preparer = preparer

    def send(self, message: models.OutboundMessage) -> object:
        """Send now (on the worker): what the connector answered, or what it raised."""
        self._budget.spend()
        return self._sender.send(self._preparer.resolved(message))

    def send_unless(self, message: models.OutboundMessage, held: Callable[[], bool]) -> object:
        """On a window thread: within the rate budget, and only if held() is False once the
        budget allows (a 429, an outage or a stop that came meanwhile holds it back, unsent)."""
        self._budget.spend()
        if held():
            raise NotSentError("the destination paused before this send")
        return self._sender.send(self._preparer.resolved(message))

    def reachable(self) -> bool | None:
        """Does the destination answer? Its connector's cheap probe (None: it has none, or our
        own budget forbids a request now). A refusal (4xx) is an answer too."""
        probe = getattr(self._sender, "probe", None)
        if probe is None:
            return None
        try:
            self._budget.spend()
        except ThrottledError:
            return None
        try:
            probe()
        except RejectedError:
            return True
        except (CloudError, ConfigError, UnsendableError):
            return False
        return True
