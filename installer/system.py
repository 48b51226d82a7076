"""The operating system boundary: running commands, looking up accounts, who we are."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class CommandError(Exception):
    """An OS command failed; the message says which and how (never a secret: none is passed)."""


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str


class Commands(Protocol):
    """What the installer asks of the OS. Tests pass a fake of exactly this."""

    def run(self, argv: Sequence[str], *, check: bool = True) -> Completed:
        """Run argv; with check, a non-zero exit raises CommandError."""
        ...

    def account(self, name: str) -> tuple[int, int] | None:
        """(uid, gid) of a local account, or None if it does not exist (or on Windows)."""
        ...

    def is_admin(self) -> bool:
        """Whether we may create users, chown files and register services."""
        ...

    def systemd_running(self) -> bool:
        """Whether systemd is this machine's service manager now (PID 1), as sd_booted() says."""
        ...


class HostCommands:
    """The real OS: subprocess, pwd/grp, the effective user id."""

    def run(self, argv: Sequence[str], *, check: bool = True) -> Completed:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        except OSError as exc:
            raise CommandError(f"{argv[0]}: {exc.strerror or exc}") from exc
        if check and done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CommandError(f"{' '.join(argv[:3])} failed ({done.returncode}): {said[0]}")
        return Completed(done.returncode, done.stdout)

    def account(self, name: str) -> tuple[int, int] | None:
        if sys.platform == "win32":
            return None
        import pwd  # POSIX only

        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid

    def systemd_running(self) -> bool:
        return os.path.isdir("/run/systemd/system")  # what sd_booted(3) checks

    def is_admin(self) -> bool:
        if sys.platform == "win32":
            return True  # the MSI and an elevated prompt run us; without it sc.exe says so
        return os.geteuid() == 0
