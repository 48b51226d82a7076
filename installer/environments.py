"""Switching a till's clouds between their credential profiles (test, production) in the config."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from agent.core.errors import ConfigError


def switched(raw: Mapping[str, Any], environment: str) -> dict[str, Any]:
    """The config with every destination on its `environment` profile (and that profile's
    base_url); ConfigError names each destination that has no such profile, and how to add one."""
    new = copy.deepcopy(dict(raw))
    problems = []
    for name, table in new.get("destinations", {}).items():
        profiles = table.get("profiles", {})
        chosen = profiles.get(environment) if isinstance(profiles, Mapping) else None
        if not isinstance(chosen, Mapping):
            problems.append(
                f"destinations.{name}: no {environment} profile; add it with `till-install "
                f"configure --set destinations.{name}.profiles.{environment}.base_url=URL` "
                f"and its secret with `--secret {name}-{environment}-…` (docs/install.md)"
            )
            continue
        table["profile"] = environment
        if "base_url" in chosen:
            table["base_url"] = chosen["base_url"]
    if problems:
        raise ConfigError(problems)
    return new


def touched(
    old: Mapping[str, Any], new: Mapping[str, Any], secret_names: Iterable[str]
) -> set[str]:
    """Destinations whose settings changed, or that name one of the changed secret files."""
    names = set(secret_names)
    before, after = old.get("destinations", {}), new.get("destinations", {})
    return {
        name
        for name, table in after.items()
        if table != before.get(name) or names & set(_strings(table))
    }


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
