"""The doctor: what a technician checks on a till — stores, keys, disk, the agent, each cloud."""

from __future__ import annotations

import email.utils
import os
import shutil
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from agent import connectors
from agent.core import acl, config, crypto, db, wording
from agent.core.errors import AgentError, NotProbedError
from agent.core.reasons import reason_in_words

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
        answering,
        clouds,
    ]
    checks = []
    for step in steps:
        try:
            checks += step(settings)
        except (AgentError, OSError) as exc:
            checks.append(Check(step.__name__.strip("_").replace("_", " "), False, str(exc)))
    return checks


def _data_dir(settings: config.Settings) -> list[Check]:
    data_dir = settings.agent.data_dir
    if not data_dir.exists():
        return [Check("data directory", False, f"{data_dir} does not exist")]
    free = shutil.disk_usage(data_dir).free
    return [
        Check("data directory", os.access(data_dir, os.W_OK), f"{data_dir} writable"),
        Check(
            "disk space",
            free >= MIN_FREE_BYTES,
            f"{wording.size(free)} free (at least {wording.size(MIN_FREE_BYTES)} wanted)",
        ),
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


def agent_url(settings: config.Settings) -> str:
    host, port = config.parse_listen(settings.api.listen)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def answering(settings: config.Settings) -> list[Check]:
    """The port answers at all (the agent runs); then its health, naming what fails."""
    url = agent_url(settings) + "/v1/health"
    try:
        answer = requests.get(url, timeout=3)
    except requests.ConnectionError:
        return [Check("port", False, f"the agent is not running: nothing answers at {url}")]
    except requests.Timeout:
        return [
            Check("port", False, f"the agent at {url} did not answer within 3 s; it may be stuck")
        ]
    port = Check("port", True, f"the agent answers at {url}")
    if answer.status_code == 200:
        return [port, Check("health", True, str(answer.json().get("status", "ok")))]
    return [port, Check("health", False, f"the agent reports a problem: {_problems(settings)}")]


def _problems(settings: config.Settings) -> str:
    """The failing parts, from /v1/status (the token file is readable to whoever checks)."""
    try:
        token = settings.api.token_file.read_text(encoding="ascii").strip()
        answer = requests.get(
            agent_url(settings) + "/v1/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        components = answer.json()["components"]
    except (OSError, ValueError, KeyError, requests.RequestException):
        return "see `till-agent status`"
    failing = [f"{c['name']}: {c['detail']}" for c in components if c["state"] == "failing"]
    return "; ".join(failing) or "see `till-agent status`"


def clouds(
    settings: config.Settings,
    read_secret: Callable[[str], str] | None = None,
    only: Collection[str] | None = None,
) -> list[Check]:
    """Each enabled destination (or those named) probed with its credentials (read_secret:
    ones not written yet first), and the till's clock against the Date it answered with."""
    dates: list[str] = []

    def remember_date(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.headers.get("Date"):
            dates.append(response.headers["Date"])

    session = connectors.make_session("TillAgent-doctor", timeout_seconds=10.0)
    session.hooks["response"].append(remember_date)
    reader = read_secret or config.secret_reader(settings.agent.credentials_dir)
    checks = []
    try:
        for destination in settings.enabled_destinations:
            if only is not None and destination.name not in only:
                continue
            dates.clear()
            checks.append(probe(destination, session, reader))
            if dates:
                checks.append(clock_check(destination.name, dates[-1], time.time()))
    finally:
        session.close()
    return checks


def probe(
    destination: config.DestinationSettings,
    session: requests.Session,
    reader: Callable[[str], str],
) -> Check:
    """One cloud asked with its credentials: what it said, in words, and what to do."""
    name = f"cloud {destination.name}"
    try:
        connectors.build(destination, session, reader).probe()  # type: ignore[union-attr]
    except NotProbedError as exc:  # a single-use token is the running agent's to spend
        return Check(name, True, f"{exc}; the health check shows what the running agent found")
    except AgentError as exc:
        return Check(name, False, reason_in_words(exc))
    return Check(name, True, "reachable and authorised")


def clock_check(name: str, date_header: str, now: float) -> Check:
    """The till's clock against a cloud's Date header (tokens and receipt times depend on it)."""
    try:
        skew = now - email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return Check(f"clock vs {name}", True, "the cloud's Date header is unreadable")
    ok = abs(skew) <= MAX_CLOCK_SKEW_SECONDS
    return Check(f"clock vs {name}", ok, f"{skew:+.0f} s" + ("" if ok else " (set the clock)"))
