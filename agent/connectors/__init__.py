"""Cloud connectors: one module per cloud API behind two small interfaces."""

from __future__ import annotations

import types

import requests

from agent.connectors import engage, lightspeed, loaded, webhook
from agent.connectors.base import (
    Connector,
    ContactSource,
    MemoryVault,
    ReadSecret,
    Sender,
    SendResult,
    Sessions,
    Vault,
    make_session,
)
from agent.core.config import DestinationSettings
from agent.core.errors import ConfigError

# One line per cloud. A test keeps these keys equal to agent.core.config.KIND_TAKES.
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
    "MemoryVault",
    "SendResult",
    "Sender",
    "Sessions",
    "Vault",
    "build",
    "make_session",
]


def build(
    destination: DestinationSettings,
    http: requests.Session,
    read_secret: ReadSecret,
    vault: Vault | None = None,
) -> Connector:
    """The connector a destination asks for; ConfigError lists every problem with its settings.

    vault: where a connector keeps its tokens and the records it created (vault.py); the running
    agent's is durable; without one (installer, doctor) a MemoryVault forgets at exit.
    """
    module = REGISTRY.get(destination.kind)
    if module is None:
        kinds = ", ".join(sorted(REGISTRY))
        raise ConfigError(
            [f"destinations.{destination.name}.kind: one of {kinds} (got {destination.kind!r})"]
        )
    settings = module.parse_settings(destination, read_secret)
    if getattr(module, "STORES_TOKENS", False):
        stored: Connector = module.create(settings, http, vault or MemoryVault())
        return stored
    connector: Connector = module.create(settings, http)
    return connector
