"""Writing the config file: a small TOML writer and dotted-key edits of a parsed table."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from typing import Any

HEADER = "# Written by till-install; change it with `till-install configure --set KEY=VALUE`.\n"


def dumps(table: Mapping[str, Any]) -> str:
    """TOML for nested tables of strings, numbers, booleans and lists of those."""
    lines = [HEADER.rstrip("\n")]
    _table(lines, (), table)
    return "\n".join(lines).strip("\n") + "\n"


def _table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    if path and (scalars or not table):
        lines += ["", f"[{'.'.join(_key(p) for p in path)}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    for key, value in table.items():
        if isinstance(value, Mapping):
            _table(lines, (*path, key), value)


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key) and key.isascii()
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no TOML for {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON strings are valid TOML basic ones
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ValueError(f"no TOML for a {type(value).__name__}")


def parse_value(text: str) -> Any:
    """A --set value: a TOML literal (true, 8765, 1.5, "x", [..]) or else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_key(table: dict[str, Any], dotted: str, value: Any) -> None:
    """table[a][b][c] = value for 'a.b.c', making tables on the way; refuses to replace one."""
    *parents, last = dotted.split(".")
    if not all(parents) or not last:
        raise ValueError(f"{dotted!r} is not a dotted key like destinations.engage.profile")
    node = table
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{dotted}: {part} is a value, not a table")
        node = child
    if isinstance(node.get(last), dict):
        raise ValueError(f"{dotted} is a table; set one of its keys")
    node[last] = value
