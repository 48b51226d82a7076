"""Fixtures for the sandbox cloud's own tests: a served cloud, a settable clock, a Session."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from agent.sandbox import SandboxCloud


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox() -> Iterator[SandboxCloud]:
    """A served SandboxCloud on 127.0.0.1 (any free port), stopped after the test."""
    cloud = SandboxCloud(seed=1).serve()
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def clocked(clock: Clock) -> Iterator[SandboxCloud]:
    """A served SandboxCloud on the test clock: short tokens, small rate window, low cap."""
    cloud = SandboxCloud(
        seed=1,
        now=clock,
        loaded_token_seconds=60,
        lightspeed_rate_limit=3,
        lightspeed_rate_window_seconds=10,
        engage_changes_cap=3,
    ).serve()
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    yield session
    session.close()
