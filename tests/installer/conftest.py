"""Fixtures for the installer's tests: a temporary root, the fake OS, answers files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from installer import steps
from installer.cli import main
from tests.conftest import free_port
from tests.installer.fakes import FakeHost

CLOSED_URL = "http://127.0.0.1:9/"  # nothing listens: the items stay queued


def answers_text(
    port: int,
    *,
    engage_url: str = CLOSED_URL,
    loaded_url: str = CLOSED_URL,
    engage_key: str = "sandbox-engage-key",
    production: bool = False,
) -> str:
    text = f"""
store_id = "S042"
till_id = "T03"
environment = "test"
port = {port}

[destinations.engage]
kind = "engage"
[destinations.engage.test]
base_url = "{engage_url}"
api_key = "{engage_key}"

[destinations.loaded]
kind = "loaded"
[destinations.loaded.test]
base_url = "{loaded_url}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
"""
    if production:
        text += f"""
[destinations.engage.production]
base_url = "{engage_url}"
api_key = "production-engage-key"
"""
    return text


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def host(root: Path) -> Iterator[FakeHost]:
    fake = FakeHost(steps.layout(root))
    yield fake
    fake.stop()


@pytest.fixture
def invoke(host: FakeHost, root: Path) -> Callable[..., Result]:
    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, [*args, "--root", str(root)], input=input, obj=host)

    return run


@pytest.fixture
def answers_file(tmp_path: Path) -> Callable[..., Path]:
    def write(**kwargs: Any) -> Path:
        path = tmp_path / "answers.toml"
        path.write_text(answers_text(free_port(), **kwargs), encoding="utf-8")
        return path

    return write


@pytest.fixture
def installed(invoke: Callable[..., Result], answers_file: Callable[..., Path]) -> Result:
    """An offline install from an answers file, the agent running (through the fake)."""
    result = invoke("install", "--non-interactive", "--answers", str(answers_file()), "--offline")
    assert result.exit_code == 0, result.output
    return result
