"""The doctor: what a technician checks on a till — stores, keys, disk, the agent, each cloud."""

from __future__ import annotations

import email.utils
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from agent import acl, app, config, crypto, db
from agent.errors import AgentError

MIN_FREE_BYTES = 500 * 1024 * 1024
MAX_CLOCK_SKEW_SECONDS = 120.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def examine(settings: config.Settings) -> list[Check]:
    """Every check, each independent: one failing never hides the others."""
    steps: list[Callable[[config.Settings], list[Check]]] = [
        _data_dir,
        _stores,
        _key_file,
        _token_file,
        _agent,
        _clouds,
    ]
    checks = []
    for step in steps:
        try:
            checks += step(settings)
        except (AgentError, OSError) as exc:
            checks.append(Check(step.__name__.strip("_"), False, str(exc)))
    return checks


def _data_dir(settings: config.Settings) -> list[Check]:
    data_dir = settings.agent.data_dir
    if not data_dir.exists():
        return [Check("data directory", False, f"{data_dir} does not exist")]
    free = shutil.disk_usage(data_dir).free
    return [
        Check("data directory", os.access(data_dir, os.W_OK), f"{data_dir} writable"),
        Check("disk space", free >= MIN_FREE_BYTES, f"{free / 1e9:.1f} GB free"),
    ]


def _stores(settings: config.Settings) -> list[Check]:
    found = []
    for name in ("outbox.db", "contacts.db"):
        path = settings.agent.data_dir / name
        if path.exists():
            problem = db.check_file(path)
            found.append(Check(f"store {name}", problem is None, problem or "quick_check ok"))
    damaged = sorted(p.name for p in settings.agent.data_dir.glob("*.corrupt-*"))
    if damaged:
        found.append(Check("damaged stores kept", False, ", ".join(damaged)))
    return found


def _key_file(settings: config.Settings) -> list[Check]:
    path = settings.privacy.key_file
    if not path.exists():
        return [Check("key file", False, f"{path} is missing")]
    held = crypto.examine(path)
    access = _owner_only("key file", path)
    return [Check("key file", access.ok, f"{held}; {access.detail}")]


def _token_file(settings: config.Settings) -> list[Check]:
    path = settings.api.token_file
    if not path.exists():
        return [Check("POS token", False, f"{path} is missing")]
    return [_owner_only("POS token", path)]


def _owner_only(name: str, path: Path) -> Check:
    if os.name == "nt":
        return Check(name, *acl.describe(path, folder=False))  # the DACL, not the mode bits
    mode = stat.S_IMODE(path.stat().st_mode)
    ok = mode & 0o077 == 0
    return Check(name, ok, f"{path} mode {mode:o}" + ("" if ok else " (must be owner-only)"))


def _agent(settings: config.Settings) -> list[Check]:
    host, port = config.parse_listen(settings.api.listen)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1/health"
    try:
        answer = requests.get(url, timeout=3)
    except requests.RequestException:
        return [Check("agent", False, f"not answering at {url}")]
    status = answer.json().get("status", "?")
    return [Check("agent", answer.status_code == 200, f"{url}: {status}")]


def _clouds(settings: config.Settings) -> list[Check]:
    """Each destination reachable and authorised (its connector's probe), and the clock."""
    built = app.build_connectors(settings)
    checks = []
    for destination in settings.enabled_destinations:
        connector = built[destination.name]
        try:
            connector.probe()  # type: ignore[union-attr]
            checks.append(Check(f"cloud {destination.name}", True, "reachable and authorised"))
        except AgentError as exc:
            checks.append(Check(f"cloud {destination.name}", False, f"{type(exc).__name__}"))
        checks.append(_clock(destination.name, destination.base_url))
    return checks


def _clock(name: str, base_url: str) -> Check:
    """The till's clock against the cloud's Date header (receipt times and tokens depend on it)."""
    try:
        answer = requests.head(base_url, timeout=5)
    except requests.RequestException as exc:
        return Check(f"clock vs {name}", False, f"no answer: {type(exc).__name__}")
    header = answer.headers.get("Date")
    if not header:
        return Check(f"clock vs {name}", True, "the cloud sends no Date header")
    return clock_check(name, header, time.time())


def clock_check(name: str, date_header: str, now: float) -> Check:
    """The till's clock against a cloud's Date header (tokens and receipt times depend on it)."""
    try:
        skew = now - email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return Check(f"clock vs {name}", True, "the cloud's Date header is unreadable")
    ok = abs(skew) <= MAX_CLOCK_SKEW_SECONDS
    return Check(f"clock vs {name}", ok, f"{skew:+.0f} s" + ("" if ok else " (set the clock)"))
