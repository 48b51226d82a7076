"""Fixtures for the connector tests: the one Session, secrets in a dict, the sandbox cloud."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests

from agent.connectors import make_session
from agent.connectors.vault import ConnectorVault
from agent.core import crypto
from agent.core.config import DestinationSettings
from agent.sandbox import SandboxCloud

SECRETS = {
    "engage-api-key": "sandbox-engage-key",
    "loaded-client-secret": "sandbox-secret",
    "lightspeed-token": "sandbox-lightspeed-token",
    "webhook-signing-secret": "sandbox-webhook-secret",
}


def read_secret(name: str) -> str:
    """The credential store of these tests."""
    return SECRETS[name]


def destination(kind: str, base_url: str, name: str = "", **options: Any) -> DestinationSettings:
    """A destination as agent.core.config builds it, connector keys in options."""
    return DestinationSettings(name=name or kind, kind=kind, base_url=base_url, options=options)


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = make_session("TillAgent/test", timeout_seconds=5.0)
    yield session
    session.close()


@pytest.fixture
def keyring(tmp_path) -> crypto.Keyring:
    return crypto.load_or_create(tmp_path / "keyring.json", may_create=True)


@pytest.fixture
def vault(tmp_path, keyring) -> Iterator[ConnectorVault]:
    """The agent's real vault (SQLite, sealed tokens) in a temporary data directory."""
    store = ConnectorVault(tmp_path, keyring)
    yield store
    store.close()


@pytest.fixture
def sandbox() -> Iterator[SandboxCloud]:
    """The sandbox cloud on loopback (agent/sandbox)."""
    cloud = SandboxCloud(seed=1).serve()
    try:
        yield cloud
    finally:
        cloud.stop()


Options = Mapping[str, Any]
