"""Cloud connectors: one module per cloud API behind two small interfaces."""

from __future__ import annotations

import types

import requests

from agent.config import DestinationSettings
from agent.connectors import engage, lightspeed, loaded, webhook
from agent.connectors.base import (
    Connector,
    ContactSource,
    ReadSecret,
    Sender,
    SendResult,
    make_session,
)
from agent.errors import ConfigError

# One line per cloud. A test keeps these keys equal to agent.config.KIND_TAKES.
REGISTRY: dict[str, types.ModuleType] = {
    "engage": engage,
    "loaded": loaded,
    "lightspeed": lightspeed,
    "webhook": webhook,
}

__all__ = [
    "REGISTRY",
    "Connector",
    "ContactSource",
    "SendResult",
    "Sender",
    "build",
    "make_session",
]


def build(
    destination: DestinationSettings, http: requests.Session, read_secret: ReadSecret
) -> Connector:
    """The connector a destination asks for; ConfigError lists every problem with its settings."""
    module = REGISTRY.get(destination.kind)
    if module is None:
        kinds = ", ".join(sorted(REGISTRY))
        raise ConfigError(
            [f"destinations.{destination.name}.kind: one of {kinds} (got {destination.kind!r})"]
        )
    settings = module.parse_settings(destination, read_secret)
    connector: Connector = module.create(settings, http)
    return connector
