"""What `till-install verify` checks: the service, its port, file permissions, disk, each cloud."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import requests

from agent import acl, app, config, connectors
from agent.doctor import MIN_FREE_BYTES, Check, clock_check
from agent.errors import AgentError, AuthError, CloudError, ConfigError, RetryableError
from installer import steps
from installer.services import ServiceManager
from installer.system import CommandError


def local(
    settings: config.Settings, layout: steps.Layout, manager: ServiceManager, owner: steps.Owner
) -> list[Check]:
    """Everything on this till: the service, the API port, permissions, disk space."""
    checks = [_service(manager), _port(settings)]
    checks.append(_mode("config file", layout.config_file, forbidden=0o027))
    secret_files = sorted(p for p in layout.credentials_dir.glob("*") if p.is_file())
    checks += [_secret(p, owner) for p in secret_files]
    if os.name == "nt":
        checks += [_folder(name, path) for name, path in _folders(layout)]
    checks.append(_disk(settings.agent.data_dir))
    return checks


def _service(manager: ServiceManager) -> Check:
    try:
        state = manager.state()
    except CommandError as exc:
        return Check("service", False, str(exc))
    return Check("service", state == "active", state)


def _folders(layout: steps.Layout) -> list[tuple[str, Path]]:
    return [
        ("config folder", layout.config_dir),
        ("credentials folder", layout.credentials_dir),
        ("data folder", layout.data_dir),
    ]


def _folder(name: str, path: Path) -> Check:
    """Windows: the folder's DACL read back (SYSTEM and Administrators only, not inherited)."""
    if not path.exists():
        return Check(name, False, f"{path} is missing")
    return Check(name, *acl.describe(path, folder=True))


def _port(settings: config.Settings) -> Check:
    url = steps.health_url(settings)
    try:
        answer = requests.get(url, timeout=3)
    except requests.RequestException:
        return Check("port", False, f"nothing answers at {url}")
    return Check("port", answer.status_code == 200, f"{url} answered {answer.status_code}")


def _mode(name: str, path: Path, *, forbidden: int) -> Check:
    if not path.exists():
        return Check(name, False, f"{path} is missing")
    if os.name == "nt":
        return Check(name, *acl.describe(path, folder=False))  # the DACL, not chmod
    mode = stat.S_IMODE(path.stat().st_mode)
    ok = mode & forbidden == 0
    return Check(
        name,
        ok,
        f"{path} mode {mode:04o}" + ("" if ok else f" (must be {~forbidden & 0o777:04o} at most)"),
    )


def _secret(path: Path, owner: steps.Owner) -> Check:
    check = _mode(f"secret {path.name}", path, forbidden=0o077)
    if check.ok and owner.uid is not None and path.stat().st_uid != owner.uid:
        return Check(check.name, False, f"{path} is not owned by the service user")
    return check


def _disk(data_dir: Path) -> Check:
    if not data_dir.exists():
        return Check("disk space", False, f"{data_dir} does not exist")
    free = shutil.disk_usage(data_dir).free
    return Check("disk space", free >= MIN_FREE_BYTES, f"{free / 1e9:.1f} GB free on {data_dir}")


def clouds(settings: config.Settings) -> list[Check]:
    """Each enabled destination probed with its credentials, and the clock against its Date."""
    dates: list[str] = []

    def remember_date(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.headers.get("Date"):
            dates.append(response.headers["Date"])

    session = connectors.make_session("TillAgent-installer", timeout_seconds=10.0)
    session.hooks["response"].append(remember_date)
    reader = app.secret_reader(settings.agent.credentials_dir)
    checks = []
    try:
        for destination in settings.enabled_destinations:
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
