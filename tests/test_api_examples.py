"""docs/api.md's worked examples, run as written against a real agent and the sandbox cloud.

Each example's `curl` runs in bash (one agent) and its Python snippet runs in one namespace
(another agent, so neither sees the other's duplicates); both answers must be the documented
one, except for values that differ on every run (times, ids the agent makes, attempt counts).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from agent import app, demo
from agent.sandbox import SandboxCloud
from tests.conftest import ROOT

API_DOC = ROOT / "docs" / "api.md"
DOC_URL = "http://127.0.0.1:8765"
BLOCK = re.compile(
    r"<!-- example ([a-z-]+): (curl|python|answer \d+)(; cloud offline)? -->\n```\w*\n(.*?)```",
    re.DOTALL,
)
# Different on every run: only their presence and kind are compared.
VOLATILE = {
    "receivedAt", "updatedAt", "nextAttemptAt", "errorId", "lastErrorId", "localId", "contactId"
}  # fmt: skip
COUNTS = {"attempts"}  # at least 1 when the documented answer has one


@dataclass
class Example:
    name: str
    offline: bool = False
    curl: str = ""
    python: str = ""
    status: int = 0
    answers: list[Any] = field(default_factory=list)


def examples() -> list[Example]:
    found: dict[str, Example] = {}
    for name, kind, offline, text in BLOCK.findall(API_DOC.read_text("utf-8")):
        example = found.setdefault(name, Example(name))
        example.offline = example.offline or bool(offline)
        if kind == "curl":
            example.curl = text
        elif kind == "python":
            example.python = text
        else:
            example.status = int(kind.split()[1])
            example.answers = json_documents(text)
    return list(found.values())


def json_documents(text: str) -> list[Any]:
    decoder, documents, at = json.JSONDecoder(), [], 0
    while (at := _skip_space(text, at)) < len(text):
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def same(documented: Any, real: Any, renames: dict[str, str], path: str = "$") -> None:
    """real is documented, but for VOLATILE values (kind only) and COUNTS (both at least 1)."""
    if isinstance(documented, dict):
        assert isinstance(real, dict), path
        assert list(real) == list(documented), (path, list(real))
        for key, value in documented.items():
            if key in VOLATILE:
                assert (value is None) == (real[key] is None), f"{path}.{key}: {real[key]!r}"
                if isinstance(value, str) and isinstance(real[key], str) and key == "localId":
                    renames[value] = real[key]
            elif key in COUNTS:
                assert (value >= 1) == (real[key] >= 1), f"{path}.{key}: {real[key]!r}"
            else:
                same(value, real[key], renames, f"{path}.{key}")
    elif isinstance(documented, list):
        assert isinstance(real, list), path
        assert len(real) == len(documented), (path, real)
        for n, (value, got) in enumerate(zip(documented, real, strict=True)):
            same(value, got, renames, f"{path}[{n}]")
    else:
        assert real == documented, f"{path}: {real!r} != {documented!r}"


class Rig:
    """A sandbox cloud and an agent delivering to it, on loopback."""

    def __init__(self, directory: Path) -> None:
        self.cloud = SandboxCloud(seed=1).serve()
        self.agent = app.start(demo.demo_settings(directory, self.cloud.url))
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.agent.token}"

    def before(self, example: Example) -> None:
        """Deliveries settled before each example; the cloud taken down for the outage ones
        and back up after them (a sale waiting for an unreachable cloud keeps its place)."""
        if example.offline and self.cloud.faults.offline is None:
            self.cloud.faults.set_offline("refused")
        elif not example.offline and self.cloud.faults.offline is not None:
            self.cloud.faults.set_offline(None)
        if not example.offline:
            self._wait(self._settled)
        elif example.name == "undelivered":
            self._wait(self._tried_once)

    def _settled(self) -> bool:
        answer = self.session.get(self.agent.url + "/v1/status", timeout=5).json()
        return all(d["depth"] + d["inFlight"] == 0 for d in answer["destinations"])

    def _tried_once(self) -> bool:
        url = self.agent.url + "/v1/receipts/S042-T03-000126"
        answer = self.session.get(url, timeout=5).json()
        return all(d["state"] == "retrying" for d in answer["destinations"])

    @staticmethod
    def _wait(condition: Any) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, "the agent did not settle"
            time.sleep(0.05)

    def stop(self) -> None:
        self.session.close()
        self.agent.stop()
        self.cloud.stop()


@pytest.fixture
def rig() -> Iterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="api-examples-") as directory:
        made = Rig(Path(directory))
        try:
            yield made
        finally:
            made.stop()


def test_api_md_has_the_worked_examples_the_integrator_needs():
    names = [e.name for e in examples()]
    for wanted in ("purchase", "refund", "split-bill", "amendment", "member", "undelivered"):
        assert wanted in names
    for example in examples():
        assert example.curl, example.name
        assert example.python, example.name
        assert example.answers, example.name
        assert "requests" not in example.python or "timeout=" in example.python


def test_every_curl_in_api_md_answers_as_documented(rig):
    renames: dict[str, str] = {}
    for example in examples():
        rig.before(example)
        command = example.curl.replace(DOC_URL, rig.agent.url)
        for documented_id, real_id in renames.items():
            command = command.replace(documented_id, real_id)
        done = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={"PATH": os.environ["PATH"], "TOKEN": rig.agent.token},
        )
        assert done.returncode == 0, (example.name, done.stderr)
        real = json_documents(done.stdout)
        assert len(real) == len(example.answers), (example.name, done.stdout)
        for documented, answer in zip(example.answers, real, strict=True):
            same(documented, answer, renames, example.name)


def test_every_python_snippet_in_api_md_answers_as_documented(rig, capsys):
    setup = API_DOC.read_text("utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"TOKEN": rig.agent.token}
    exec(setup.replace(DOC_URL, rig.agent.url), namespace)
    renames: dict[str, str] = {}
    for example in examples():
        rig.before(example)
        exec(example.python, namespace)
        printed = capsys.readouterr().out.splitlines()
        assert len(printed) == len(example.answers), (example.name, printed)
        response = namespace["r"]
        assert response.status_code == example.status, (example.name, response.text)
        for line in printed:
            assert line.startswith(f"{example.status} "), (example.name, line)
        same(example.answers[-1], response.json(), renames, example.name)
    namespace["agent"].close()


def test_api_md_error_table_has_every_code_the_code_gives():
    """Every error code the HTTP edge can answer is in api.md's table, with its status."""
    from agent.api import errors

    table = API_DOC.read_text("utf-8").split("## Errors", 1)[1]
    rows = re.findall(r"^\| (\d{3}) \| (.+?) \|", table, re.MULTILINE)
    documented = {
        (int(status), code) for status, codes in rows for code in re.findall(r"`([a-z_]+)`", codes)
    }
    given = {(cls.status, cls.code) for cls in _subclasses(errors.HttpError)}
    given |= set(errors.STATUS_FOR.values()) - {(422, "invalid_request")}  # each 422 has its own
    given.add(errors.INTERNAL)
    # The reconciliation's range and destination errors are answered as 400 bad_request
    # (agent/api/routes.py; tests/test_reconcile.py checks the status), never as their codes.
    for path in set((ROOT / "agent").rglob("*.py")) - {ROOT / "agent" / "ops" / "reconcile.py"}:
        given |= {(422, code) for code in re.findall(r'code="([a-z_]+)"', path.read_text("utf-8"))}
    assert given - documented == set()


def _subclasses(cls: Any) -> set[Any]:
    found: set[Any] = set(cls.__subclasses__())
    return found | {sub for child in found for sub in _subclasses(child)}
