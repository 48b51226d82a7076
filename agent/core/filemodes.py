"""What the agent writes is owner-only whatever the umask; a secret others can read is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Files 0600 and folders 0700 whatever umask the agent was started with (a shell's 022, 000).
OWNER_ONLY_UMASK = 0o077


def owner_only_from_now_on() -> None:
    """Every file and folder this process creates from now on is owner-only (POSIX).

    On Windows the umask does nothing: the data, log and credentials folders carry a DACL
    for SYSTEM and Administrators only (agent/core/acl.py, set by the installer) and what is
    created in them inherits it.
    """
    if os.name == "posix":
        os.umask(OWNER_ONLY_UMASK)


def shared_with_others(path: Path) -> str | None:
    """Why a secret file is not owner-only ("mode 0644"), or None when it is (POSIX only)."""
    if os.name != "posix":
        return None  # Windows: the folder's DACL decides (doctor reads it back, agent/core/acl.py)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 == 0:
        return None
    return f"mode {mode:04o}"


def refusal(what: str, path: Path, why: str) -> str:
    """The words for a secret file others can read, and the command that fixes it."""
    return (
        f"the {what} {path} can be read by other users ({why}); it must be owner-only: "
        f"run `chmod 600 {path}` and start again"
    )
