"""The interactive install: click prompts that fill the same Answers an answers file gives."""

from __future__ import annotations

from typing import Any

import click

from installer.answers import (
    ASKED_OPTIONS,
    DEFAULT_PORT,
    ENVIRONMENTS,
    SECRET_KEYS,
    Answers,
    from_mapping,
)


def ask() -> Answers:
    """Store, till, environment, port, then destinations until an empty kind."""
    raw: dict[str, Any] = {
        "store_id": click.prompt("Store id", type=str).strip(),
        "till_id": click.prompt("Till id", type=str).strip(),
        "environment": click.prompt("Environment", type=click.Choice(ENVIRONMENTS), default="test"),
        "port": click.prompt("Port for the POS (loopback)", type=int, default=DEFAULT_PORT),
    }
    raw["destinations"] = _destinations(raw["environment"])
    return from_mapping(raw)


def _destinations(environment: str) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    kinds = click.Choice([*SECRET_KEYS, ""])
    while True:
        prompt = "Cloud to deliver to" + (" (empty: done)" if tables else "")
        kind = click.prompt(prompt, type=kinds, default="" if tables else None, show_choices=True)
        if not kind:
            return tables
        name = click.prompt("  Name for it", default=kind)
        tables[name] = {"kind": kind, environment: _environment(kind, environment)}


def _environment(kind: str, environment: str) -> dict[str, Any]:
    values: dict[str, Any] = {"base_url": click.prompt(f"  Base URL ({environment})").strip()}
    for option in ASKED_OPTIONS.get(kind, ()):
        values[option] = click.prompt(f"  {option.replace('_', ' ').capitalize()}").strip()
    for secret in SECRET_KEYS[kind]:
        label = secret.replace("_", " ")
        values[secret] = click.prompt(f"  {label.capitalize()} (not shown)", hide_input=True)
    return values
