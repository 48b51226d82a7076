"""Fixtures for the Windows path under Wine: the prefix, the sandbox cloud, a till's answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sandbox import SandboxCloud
from tests.ci import need
from tests.conftest import free_port
from tests.installer.conftest import answers_text
from tests.wine import prepare
from tests.wine.prefix import Prefix


@pytest.fixture(scope="session")
def prefix() -> Iterator[Prefix]:
    """A fresh prefix with the Windows Python and the shims; a keeper holds its services up."""
    missing = prepare.missing_packages()
    need(
        not missing,
        f"Debian packages missing: {' '.join(missing)} (`make test-windows` installs them as "
        "root with apt-get)",
    )
    made = prepare.fresh_prefix()
    made.start_keeper()
    yield made
    made.shutdown()


@pytest.fixture(scope="session")
def cloud() -> Iterator[SandboxCloud]:
    """The sandbox cloud on Linux's loopback, which the agent under Wine delivers to."""
    made = SandboxCloud(seed=17).serve()
    yield made
    made.stop()


@pytest.fixture
def answers(tmp_path: Path, cloud: SandboxCloud) -> tuple[Path, int]:
    """An answers file for this till (the sandbox's URLs, a free port), and that port."""
    port = free_port()
    path = tmp_path / "answers.toml"
    text = answers_text(port, engage_url=cloud.url, loaded_url=cloud.url + "/loaded")
    path.write_text(text, encoding="utf-8")
    return path, port
