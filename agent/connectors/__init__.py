"""Cloud connectors: one module per cloud API behind two small interfaces.

A cloud is one module here: its KIND (a config.CloudKind: what it takes, how it amends,
whether it is a contact source, its documented rate limit, what else it can do), its settings
(parse_settings) and its connector (create). REGISTRY lists the modules; KINDS is what config
and app ask about a kind. Adding a cloud: one module, one line below, its sandbox, its tests.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

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
from agent.core.config import CloudKind, DestinationSettings
from agent.core.errors import ConfigError

# One line per cloud: its module, by the kind its KIND declares.
REGISTRY: dict[str, types.ModuleType] = {
    module.KIND.name: module for module in (engage, loaded, lightspeed, webhook)
}
KINDS: Mapping[str, CloudKind] = types.MappingProxyType(
    {name: module.KIND for name, module in REGISTRY.items()}
)

__all__ = [
    "KINDS",
    "REGISTRY",
    "CloudKind",
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
    if KINDS[destination.kind].stores_tokens:
        stored: Connector = module.create(settings, http, vault or MemoryVault())
        return stored
    connector: Connector = module.create(settings, http)
    return connector
