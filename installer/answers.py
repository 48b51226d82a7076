"""The technician's answers (wizard or answers file) and the config and secrets they make."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENVIRONMENTS = ("test", "production")
DEFAULT_PORT = 8765
# The secret each kind needs: the answer's name -> the connector key naming the secret file.
SECRET_KEYS: dict[str, dict[str, str]] = {
    "engage": {"api_key": "api_key_secret"},
    "loaded": {"client_secret": "client_secret_secret"},
    "lightspeed": {"token": "token_secret"},
    "webhook": {"signing_key": "signing_secret"},
}
# Plain (not secret) settings the wizard asks for, per kind.
ASKED_OPTIONS: dict[str, tuple[str, ...]] = {"loaded": ("client_id",)}
TOP_KEYS = ("store_id", "till_id", "environment", "port", "destinations", "config")


class AnswersError(Exception):
    """The answers are incomplete or wrong; carries every problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class DestinationAnswers:
    """One cloud: its kind, connector keys, and per environment a base_url, keys and secrets."""

    name: str
    kind: str
    environments: Mapping[str, Mapping[str, Any]]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answers:
    store_id: str
    till_id: str
    environment: str
    port: int = DEFAULT_PORT
    destinations: tuple[DestinationAnswers, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)  # extra config sections, verbatim


def secret_file_name(destination: str, environment: str, answer_key: str) -> str:
    """engage, test, api_key -> engage-test-api-key (a plain file name in the credentials dir)."""
    return f"{destination}-{environment}-{answer_key}".replace("_", "-")


def load(path: Path) -> Answers:
    """Read and check an answers file (TOML); AnswersError lists every problem."""
    return from_mapping(read(path))


def read(path: Path) -> dict[str, Any]:
    """The answers file parsed (TOML); AnswersError when it cannot be read."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AnswersError([f"answers: cannot read {path}: {exc}"]) from exc


def from_mapping(raw: Mapping[str, Any]) -> Answers:
    """Answers from a parsed table; AnswersError lists every problem."""
    answers, problems = check(raw)
    if problems:
        raise AnswersError(problems)
    return answers


# Stands in for a missing or wrong answer (its problem is reported) so that the config the
# other answers make can still be checked in the same pass: every problem is listed at once.
PLACEHOLDER = "answer-missing"
PLACEHOLDER_URL = "https://answer-missing.invalid"


def check(raw: Mapping[str, Any]) -> tuple[Answers, list[str]]:
    """Answers as far as they go (placeholders where one is missing), and every problem."""
    problems = [f"{key}: unknown key" for key in sorted(set(raw) - set(TOP_KEYS))]
    texts = {k: raw.get(k, "") for k in ("store_id", "till_id")}
    for key, value in texts.items():
        if not _text(value):
            problems.append(f"{key}: required, a string")
            texts[key] = PLACEHOLDER
    environment = raw.get("environment", "test")
    if environment not in ENVIRONMENTS:
        problems.append(f"environment: one of {', '.join(ENVIRONMENTS)} (got {environment!r})")
        environment = "test"
    port = raw.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        problems.append(f"port: a port number 1-65535 (got {port!r})")
        port = DEFAULT_PORT
    destinations = _destinations(raw.get("destinations", {}), str(environment), problems)
    extra = raw.get("config", {})
    if not isinstance(extra, Mapping):
        problems.append("config: must be a table of config sections")
        extra = {}
    answers = Answers(
        str(texts["store_id"]), str(texts["till_id"]), environment, port, destinations, extra
    )
    return answers, problems


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _destinations(
    table: object, environment: str, problems: list[str]
) -> tuple[DestinationAnswers, ...]:
    if not isinstance(table, Mapping) or not table:
        problems.append("destinations: at least one [destinations.<name>] table")
        return ()
    built = []
    for name, raw in table.items():
        if not isinstance(raw, Mapping):
            problems.append(f"destinations.{name}: must be a table")
            continue
        destination = _destination(name, raw, environment, problems)
        if destination is not None:
            built.append(destination)
    return tuple(built)


def _destination(
    name: str, raw: Mapping[str, Any], environment: str, problems: list[str]
) -> DestinationAnswers | None:
    """One cloud's answers, or None when too little is known to build its config."""
    prefix = f"destinations.{name}"
    kind = raw.get("kind", "")
    if kind not in SECRET_KEYS:
        problems.append(f"{prefix}.kind: one of {', '.join(SECRET_KEYS)} (got {kind!r})")
    environments = {k: v for k, v in raw.items() if k in ENVIRONMENTS}
    options = {k: v for k, v in raw.items() if k not in ENVIRONMENTS and k != "kind"}
    if environment not in environments:
        problems.append(f"{prefix}.{environment}: required (the environment this till uses)")
    checked = {
        env: _environment(f"{prefix}.{env}", str(kind), values, problems)
        for env, values in environments.items()
    }
    usable = {env: values for env, values in checked.items() if values is not None}
    if kind not in SECRET_KEYS or environment not in usable:
        return None
    return DestinationAnswers(name, str(kind), usable, options)


def _environment(
    prefix: str, kind: str, values: object, problems: list[str]
) -> dict[str, Any] | None:
    """One environment's table, with placeholders where an answer is missing or wrong."""
    if not isinstance(values, Mapping):
        problems.append(f"{prefix}: must be a table")
        return None
    table = dict(values)
    problem = base_url_problem(table.get("base_url"))
    if problem:
        problems.append(f"{prefix}.base_url: {problem}")
        table["base_url"] = PLACEHOLDER_URL
    for secret in SECRET_KEYS.get(kind, {}):
        if not _text(table.get(secret)):
            problems.append(f"{prefix}.{secret}: required (a secret)")
            table[secret] = PLACEHOLDER
    return table


def base_url_problem(value: object) -> str | None:
    """What is wrong with a cloud's base URL as typed, or None."""
    if not _text(value):
        return "required"
    parts = urlsplit(str(value).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"an http:// or https:// URL with a host (got {value!r})"
    return None


def config_and_secrets(
    answers: Answers, paths: Mapping[str, Mapping[str, str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The config table (paths merged in) and the secrets by file name; no secret in the first."""
    raw: dict[str, Any] = copy.deepcopy(dict(answers.config))
    raw.setdefault("agent", {}).update(store_id=answers.store_id, till_id=answers.till_id)
    raw["agent"].update(paths.get("agent", {}))
    raw.setdefault("api", {})["listen"] = f"127.0.0.1:{answers.port}"
    secrets: dict[str, str] = {}
    tables = raw.setdefault("destinations", {})
    for destination in answers.destinations:
        tables[destination.name] = _destination_table(destination, answers.environment, secrets)
    return raw, secrets


def _destination_table(
    destination: DestinationAnswers, environment: str, secrets: dict[str, str]
) -> dict[str, Any]:
    chosen = destination.environments[environment]
    table: dict[str, Any] = {
        "kind": destination.kind,
        "base_url": chosen["base_url"],
        **destination.options,
        "profile": environment,
        "profiles": {},
    }
    names = SECRET_KEYS[destination.kind]
    for env, values in destination.environments.items():
        profile: dict[str, Any] = {}
        for key, value in values.items():
            if key in names:
                file_name = secret_file_name(destination.name, env, key)
                secrets[file_name] = str(value).strip()
                profile[names[key]] = file_name
            else:
                profile[key] = value
        table["profiles"][env] = profile
    return table
