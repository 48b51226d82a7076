"""The interactive install: click prompts that fill the same Answers an answers file gives.

Each answer is checked as it is typed and asked again until it is right, so the answers at the
end make a valid install (the whole configuration is still checked before anything is written).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from agent.core.config import NAME_PATTERN
from installer.answers import (
    ASKED_OPTIONS,
    DEFAULT_PORT,
    ENVIRONMENTS,
    SECRET_KEYS,
    Answers,
    AnswersError,
    base_url_problem,
    from_mapping,
)


def ask() -> Answers:
    """Store, till, environment, port, then destinations until an empty kind."""
    raw: dict[str, Any] = {
        "store_id": _ask("Store id", _required),
        "till_id": _ask("Till id", _required),
        "environment": click.prompt("Environment", type=click.Choice(ENVIRONMENTS), default="test"),
        "port": click.prompt(
            "Port for the POS (loopback)", type=click.IntRange(1, 65535), default=DEFAULT_PORT
        ),
    }
    raw["destinations"] = _destinations(raw["environment"])
    try:
        return from_mapping(raw)
    except AnswersError as exc:  # each answer was checked: this would be our bug, said plainly
        raise click.ClickException("; ".join(exc.problems)) from exc


def _destinations(environment: str) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    kinds = click.Choice([*SECRET_KEYS, ""])
    while True:
        prompt = "Cloud to deliver to" + (" (empty: done)" if tables else "")
        kind = click.prompt(prompt, type=kinds, default="" if tables else None, show_choices=True)
        if not kind:
            return tables
        name = _ask("  Name for it", _name(tables), default=kind)
        tables[name] = {"kind": kind, environment: _environment(kind, environment)}


def _environment(kind: str, environment: str) -> dict[str, Any]:
    values: dict[str, Any] = {"base_url": _ask(f"  Base URL ({environment})", _base_url)}
    for option in ASKED_OPTIONS.get(kind, ()):
        values[option] = _ask(f"  {option.replace('_', ' ').capitalize()}", _required)
    for secret in SECRET_KEYS[kind]:
        label = f"  {secret.replace('_', ' ').capitalize()} (not shown)"
        values[secret] = _ask(label, _required, hide_input=True)
    return values


def _ask(text: str, check: Callable[[str], str], **kwargs: Any) -> str:
    """A prompt whose answer `check` vets: a wrong one is said and asked again."""
    answer: str = click.prompt(text, type=str, value_proc=check, **kwargs)
    return answer


def _required(value: str) -> str:
    if not value.strip():
        raise click.BadParameter("an answer is required")
    return value.strip()


def _base_url(value: str) -> str:
    problem = base_url_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value.strip()


def _name(taken: dict[str, Any]) -> Callable[[str], str]:
    def check(value: str) -> str:
        name = value.strip()
        if not NAME_PATTERN.match(name):
            raise click.BadParameter("1-32 of a-z, 0-9 and _, starting with a letter")
        if name in taken:
            raise click.BadParameter(f"{name} is taken already")
        return name

    return check
