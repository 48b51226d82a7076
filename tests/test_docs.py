"""The docs stay true: configuration.md lists every setting with its default."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from pathlib import Path

from agent.core import config
from tests.conftest import ROOT

CONFIG_DOC = ROOT / "docs" / "configuration.md"
REQUIRED = {"agent.store_id", "agent.till_id"}
ROW = re.compile(r"^\| `([a-z_<>.]+)` \| ([^|]+) \|", re.MULTILINE)


def documented() -> dict[str, str]:
    return {key: default.strip() for key, default in ROW.findall(CONFIG_DOC.read_text("utf-8"))}


def code_settings() -> dict[str, object]:
    keys: dict[str, object] = {}
    for section, cls in config.SECTIONS.items():
        for field in dataclasses.fields(cls):
            keys[f"{section}.{field.name}"] = field.default
    for key in config.DESTINATION_KEYS:
        keys[f"destinations.<name>.{key}"] = None
    return keys


def rendered(default: object) -> str | None:
    """How a default reads in the doc; None where the doc explains it in words."""
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str | Decimal):
        return f'`"{default}"`' if default else "(none)"
    if default == ():
        return "`[]`"
    if isinstance(default, int | float):
        return f"`{default}`"
    return None


def test_configuration_doc_lists_every_setting_in_code_order():
    assert list(documented()) == list(code_settings())


def settings_table() -> list[str]:
    """The lines of the table under '## Settings', up to the first line that is not a row."""
    lines = CONFIG_DOC.read_text("utf-8").split("## Settings", 1)[1].splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("| key |"))
    end = next((n for n in range(start, len(lines)) if not lines[n].startswith("|")), len(lines))
    return lines[start:end]


def test_configuration_doc_settings_are_one_table():
    """A blank line inside a Markdown table ends it: every setting must sit in the one table."""
    table = "\n".join(settings_table())
    assert {key for key, _ in ROW.findall(table)} == set(documented())
    assert settings_table()[1].startswith("|---")


def test_configuration_doc_shows_each_default():
    doc = documented()
    for key, default in code_settings().items():
        expected = rendered(default)
        if expected == "(none)" and key in REQUIRED:
            expected = "(required)"
        if expected is not None:
            assert doc[key] == expected, key


def test_doc_links_resolve():
    for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)\)", path.read_text("utf-8")):
            if not target.startswith("http"):
                assert (path.parent / target).exists() or Path(target).exists(), (path, target)


RELIABILITY_DOC = ROOT / "docs" / "reliability.md"
TEST_REF = re.compile(r"`((?:[a-z_]+/)*test_[a-z0-9_]+\.py)(?:::([a-z0-9_]+))?`|`::([a-z0-9_]+)`")
MATRIX_ROW = re.compile(r"^\| (\d+) \|", re.MULTILINE)


def defines(path: Path, function: str) -> bool:
    pattern = rf"^(async )?def {function}\b|^{function} ="
    return re.search(pattern, path.read_text("utf-8"), re.MULTILINE) is not None


def test_reliability_md_has_every_matrix_row_and_names_only_tests_that_exist():
    text = RELIABILITY_DOC.read_text("utf-8")
    rows = {int(n) for n in MATRIX_ROW.findall(text)}
    assert rows == set(range(1, 48)), sorted(set(range(1, 48)) ^ rows)
    missing = []
    current: Path | None = None
    for path, name, continued in TEST_REF.findall(text):
        if path:
            current = ROOT / path if path.startswith("tests/") else ROOT / "tests" / path
            if not current.exists():
                missing.append(path)
                continue
        function = name or continued
        if function and current is not None and not defines(current, function):
            missing.append(f"{current.name}::{function}")
    assert missing == []


EVIDENCE = re.compile(r"^\| (?!connector )(\w+) \| [^|]+ \| ([^|]+) \|$", re.M)


def test_the_evidence_table_covers_every_connector_and_names_a_source_per_row():
    from agent.connectors import REGISTRY

    text = (ROOT / "docs" / "connectors.md").read_text("utf-8")
    table = text[text.index("## Evidence: what each behaviour rests on") :]
    rows = EVIDENCE.findall(table)
    assert {kind for kind, _ in rows} == set(REGISTRY)
    for kind, source in rows:
        named = "." in source or "/" in source or "seed" in source
        assert named or "our assumption" in source or "ours" in source, (kind, source)


def test_each_decision_has_its_own_number_and_its_title_says_it():
    decisions = sorted((ROOT / "docs" / "decisions").glob("*.md"))
    numbers = [int(path.name[:4]) for path in decisions]
    assert len(numbers) == len(set(numbers)), [p.name for p in decisions]
    for path, number in zip(decisions, numbers, strict=True):
        title = path.read_text(encoding="utf-8").splitlines()[0]
        assert title.startswith(f"# {number}. "), (path.name, title)
