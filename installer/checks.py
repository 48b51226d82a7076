"""What `till-install verify` checks: the service, its port, file permissions, disk, each cloud."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import requests

from agent import app, config, connectors, wording
from agent.doctor import MIN_FREE_BYTES, Check, clock_check
from agent.errors import AgentError, AuthError, CloudError, ConfigError, RetryableError
from installer import steps
from installer.services import SERVICE_STATES, ServiceManager


def local(
    settings: config.Settings, layout: steps.Layout, manager: ServiceManager, owner: steps.Owner
) -> list[Check]:
    """Everything on this till: the service, the API port, permissions, disk space."""
    checks = [_service(manager)]
    checks += _port(settings)
    checks.append(_mode("config file", layout.config_file, forbidden=0o027))
    secret_files = sorted(p for p in layout.credentials_dir.glob("*") if p.is_file())
    checks += [_secret(p, owner) for p in secret_files]
    checks.append(_disk(settings.agent.data_dir))
    return checks


def _service(manager: ServiceManager) -> Check:
    """The service manager's word for the agent, and what it means for the technician."""
    reason = manager.unavailable()
    if reason is not None:
        return Check("service", False, f"{reason}: cannot check it; see docs/install.md")
    state = manager.state()
    return Check("service", state == "active", f"{state}: {SERVICE_STATES.get(state, state)}")


def _port(settings: config.Settings) -> list[Check]:
    """The port answers at all (the agent runs); then what its health says, with the cause."""
    url = steps.health_url(settings)
    try:
        answer = requests.get(url, timeout=3)
    except requests.ConnectionError:
        return [Check("port", False, f"nothing answers at {url}: the agent is not running")]
    except requests.Timeout:
        return [Check("port", False, f"{url} did not answer within 3 s: the agent may be stuck")]
    port = Check("port", True, f"the agent answers at {url}")
    if answer.status_code == 200:
        return [port, Check("health", True, answer.json().get("status", "ok"))]
    return [port, Check("health", False, f"the agent reports a problem: {_problems(settings)}")]


def _problems(settings: config.Settings) -> str:
    """The failing parts, from /v1/status (the token is readable: verify runs as root)."""
    url = steps.health_url(settings).replace("/v1/health", "/v1/status")
    try:
        token = settings.api.token_file.read_text(encoding="ascii").strip()
        answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        components = answer.json()["components"]
    except (OSError, ValueError, KeyError, requests.RequestException):
        return "see `till-agent status`"
    failing = [f"{c['name']}: {c['detail']}" for c in components if c["state"] == "failing"]
    return "; ".join(failing) or "see `till-agent status`"


def _mode(name: str, path: Path, *, forbidden: int) -> Check:
    if not path.exists():
        return Check(name, False, f"{path} is missing")
    mode = stat.S_IMODE(path.stat().st_mode)
    ok = os.name != "posix" or mode & forbidden == 0
    return Check(
        name,
        ok,
        f"{path} mode {mode:04o}" + ("" if ok else f" (must be {~forbidden & 0o777:04o} at most)"),
    )


def _secret(path: Path, owner: steps.Owner) -> Check:
    """Owner-only, and root's: systemd hands the agent a read-only copy; the file stays out of
    its reach (as the agent's own, a compromised agent could rewrite its credentials)."""
    check = _mode(f"secret {path.name}", path, forbidden=0o077)
    if check.ok and owner.uid is not None and path.stat().st_uid != 0:
        return Check(
            check.name,
            False,
            f"{path} belongs to uid {path.stat().st_uid}, not root (till-install install fixes it)",
        )
    return check


def _disk(data_dir: Path) -> Check:
    if not data_dir.exists():
        return Check("disk space", False, f"{data_dir} does not exist")
    free = shutil.disk_usage(data_dir).free
    wanted = f"at least {wording.size(MIN_FREE_BYTES)} wanted"
    return Check("disk space", free >= MIN_FREE_BYTES, f"{wording.size(free)} free ({wanted})")


def clouds(
    settings: config.Settings,
    read_secret: Callable[[str], str] | None = None,
    only: Collection[str] | None = None,
) -> list[Check]:
    """Each enabled destination (or those named) probed with its credentials (read_secret:
    ones not written yet first), and the clock against its Date."""
    dates: list[str] = []

    def remember_date(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.headers.get("Date"):
            dates.append(response.headers["Date"])

    session = connectors.make_session("TillAgent-installer", timeout_seconds=10.0)
    session.hooks["response"].append(remember_date)
    reader = read_secret or app.secret_reader(settings.agent.credentials_dir)
    checks = []
    try:
        for destination in settings.enabled_destinations:
            if only is not None and destination.name not in only:
                continue
            dates.clear()
            checks.append(_probe(destination, session, reader))
            if dates:
                checks.append(clock_check(destination.name, dates[-1], time.time()))
    finally:
        session.close()
    return checks


def _probe(
    destination: config.DestinationSettings, session: requests.Session, reader: Any
) -> Check:
    name = f"cloud {destination.name}"
    try:
        connectors.build(destination, session, reader).probe()  # type: ignore[union-attr]
    except ConfigError as exc:
        return Check(name, False, "misconfigured: " + "; ".join(exc.problems))
    except AuthError as exc:
        return Check(name, False, f"credentials refused (HTTP {exc.status}); check the secret")
    except RetryableError as exc:
        return Check(name, False, f"unreachable ({_reason(exc)})")
    except (CloudError, AgentError) as exc:
        return Check(name, False, f"unexpected answer ({_reason(exc)})")
    return Check(name, True, "reachable and authorised")


def _reason(exc: AgentError) -> str:
    status = getattr(exc, "status", None)
    return f"HTTP {status}" if status else type(exc.__cause__ or exc).__name__
