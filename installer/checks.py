"""What `till-install verify` checks: the service, its port, file permissions, disk, each cloud."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from agent import config, wording
from agent.doctor import MIN_FREE_BYTES, Check, answering
from installer import steps
from installer.services import SERVICE_STATES, ServiceManager


def local(
    settings: config.Settings, layout: steps.Layout, manager: ServiceManager, owner: steps.Owner
) -> list[Check]:
    """Everything on this till: the service, the API port, permissions, disk space."""
    checks = [_service(manager)]
    checks += answering(settings)
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
