"""What `till-install verify` checks: the service, its port, file permissions, disk, each cloud."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from agent.core import acl, config, wording
from agent.ops.doctor import MIN_FREE_BYTES, Check, answering
from installer import steps
from installer.services import SERVICE_STATES, ServiceManager
from installer.system import CommandError


def local(
    settings: config.Settings, layout: steps.Layout, manager: ServiceManager, owner: steps.Owner
) -> list[Check]:
    """Everything on this till: the service, the API port, permissions, disk space."""
    checks = [_service(manager)]
    checks += answering(settings)
    checks.append(_mode("config file", layout.config_file, forbidden=0o027))
    secret_files = sorted(p for p in layout.credentials_dir.glob("*") if p.is_file())
    checks += [_secret(p, owner) for p in secret_files]
    if os.name == "nt":
        checks += [_folder(name, path) for name, path in _folders(layout)]
    checks.append(_disk(settings.agent.data_dir))
    return checks


def _service(manager: ServiceManager) -> Check:
    """The service manager's word for the agent, and what it means for the technician."""
    reason = manager.unavailable()
    if reason is not None:
        return Check("service", False, f"{reason}: cannot check it; see docs/install.md")
    try:
        state = manager.state()
    except CommandError as exc:  # sc.exe query failed for another reason than "no such service"
        return Check("service", False, str(exc))
    return Check("service", state == "active", f"{state}: {SERVICE_STATES.get(state, state)}")


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
