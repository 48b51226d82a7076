"""Registering, starting and stopping the agent as an OS service: systemd or Windows' SCM."""

from __future__ import annotations

import importlib.resources
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from installer.system import CommandError, Commands

UNIT_NAME = "till-agent.service"
WINDOWS_NAME = "TillAgent"
SERVICE_USER = "till-agent"
DEFAULT_EXEC = "/opt/till-agent/bin/till-agent"
TOKEN_CREDENTIAL = "pos-token"


class ServiceManager(Protocol):
    """One OS's service manager, as far as the installer needs it."""

    def unavailable(self) -> str | None:
        """Why services cannot be started on this machine now, in words; None when they can."""
        ...

    def register(
        self, program: Path, credentials: Iterable[Path], *, offline: bool = False
    ) -> None:
        """Install (or refresh) the service definition for `program`; enable it at boot. Paths
        are the target system's. Offline (staging), or where unavailable(), only the definition
        is written, and enabled without asking the running service manager."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None:
        """Stop and return once stopped (graceful: the agent finishes or requeues)."""
        ...

    def restart(self) -> None: ...

    def state(self) -> str:
        """'active' when running; otherwise the manager's word for it."""
        ...

    def unregister(self) -> None:
        """Disable and remove the service definition; no error if it is not there."""
        ...


def unit_text(program: Path) -> str:
    """The unit shipped in service/linux, its ExecStart pointing at this install's program."""
    shipped = importlib.resources.files("service").joinpath("linux", UNIT_NAME)
    text = shipped.read_text(encoding="utf-8")
    return text.replace(f"ExecStart={DEFAULT_EXEC} ", f"ExecStart={program} ")


def credentials_dropin(credentials: Iterable[Path]) -> str:
    """One LoadCredential= per cloud secret (the POS token is in the unit itself)."""
    lines = [
        "# Written by till-install: the cloud secrets, handed to the agent by systemd.",
        "[Service]",
    ]
    for path in sorted(credentials):
        if path.name != TOKEN_CREDENTIAL:
            lines.append(f"LoadCredential={path.name}:{path}")
    return "\n".join(lines) + "\n"


NO_SYSTEMD = (
    "no systemd is running on this machine (a container, a chroot or an image being staged)"
)
# systemctl is-active's words, said so a technician knows what to do next.
SERVICE_STATES = {
    "active": "running",
    "inactive": "not running: start it with `systemctl start till-agent`; why it stopped: "
    "`journalctl -u till-agent -n 50`",
    "failed": "failed: it exited with an error; see `journalctl -u till-agent -n 50`, then "
    "`systemctl restart till-agent`",
    "activating": "starting, or waiting to be restarted after a crash (RestartSec=5 s); run "
    "verify again in a minute",
    "deactivating": "stopping",
    "reloading": "reloading",
    "unknown": "not installed as a service here (`till-install install`)",
}


class Systemd:
    """systemctl over a unit directory (normally /etc/systemd/system), under `root` if staged."""

    def __init__(
        self, commands: Commands, unit_dir: Path, credentials_dir: Path, root: Path | None = None
    ) -> None:
        self._commands = commands
        self.unit_file = unit_dir / UNIT_NAME
        self.dropin_file = unit_dir / f"{UNIT_NAME}.d" / "credentials.conf"
        self._credentials_dir = credentials_dir
        self._root = root

    def unavailable(self) -> str | None:
        return None if self._commands.systemd_running() else NO_SYSTEMD

    def register(
        self, program: Path, credentials: Iterable[Path], *, offline: bool = False
    ) -> None:
        # systemd reads LoadCredential= paths as root on the real system: name them there.
        _write(self.unit_file, unit_text(program))
        _write(self.dropin_file, credentials_dropin(credentials))
        if offline or self.unavailable() is not None:
            # Enabled offline (a symlink under the root): a staged image starts it at boot.
            self._systemctl(f"--root={self._root or '/'}", "enable", UNIT_NAME)
            return
        self._systemctl("daemon-reload")
        self._systemctl("enable", UNIT_NAME)

    def start(self) -> None:
        self._systemctl("start", UNIT_NAME)

    def stop(self) -> None:
        if self.unavailable() is None:
            self._systemctl("stop", UNIT_NAME)  # returns once stopped (or TimeoutStopSec killed)

    def restart(self) -> None:
        self._systemctl("restart", UNIT_NAME)

    def state(self) -> str:
        if self.unavailable() is not None:
            return "unavailable"
        done = self._commands.run(["systemctl", "is-active", UNIT_NAME], check=False)
        return done.stdout.strip() or "unknown"

    def unregister(self) -> None:
        if self.unavailable() is None:
            self._commands.run(["systemctl", "disable", "--now", UNIT_NAME], check=False)
        else:
            root = f"--root={self._root or '/'}"
            self._commands.run(["systemctl", root, "disable", UNIT_NAME], check=False)
        for path in (self.dropin_file, self.unit_file):
            path.unlink(missing_ok=True)
        if self.dropin_file.parent.exists() and not any(self.dropin_file.parent.iterdir()):
            self.dropin_file.parent.rmdir()
        if self.unavailable() is None:
            self._systemctl("daemon-reload")

    def _systemctl(self, *args: str) -> None:
        self._commands.run(["systemctl", *args])


class WindowsServices:
    """sc.exe over the frozen service executable (service/windows.py inside it)."""

    def __init__(
        self, commands: Commands, *, wait_seconds: float = 60.0, poll_seconds: float = 0.5
    ) -> None:
        self._commands = commands
        self._wait_seconds = wait_seconds
        self._poll_seconds = poll_seconds

    def unavailable(self) -> str | None:
        return None

    def register(
        self, program: Path, credentials: Iterable[Path], *, offline: bool = False
    ) -> None:
        sc = ["sc.exe"]
        image = image_path(program)
        if self.state() == "not-installed":
            self._commands.run(
                [*sc, "create", WINDOWS_NAME, "binPath=", image, "start=", "delayed-auto"]
            )
        else:
            self._commands.run([*sc, "config", WINDOWS_NAME, "binPath=", image])
        self._commands.run([*sc, "description", WINDOWS_NAME, "Till Agent: POS intake"])
        # Restart after 5 s, 5 s, then 60 s; forget failures after a day of running.
        actions = "restart/5000/restart/5000/restart/60000"
        self._commands.run([*sc, "failure", WINDOWS_NAME, "reset=", "86400", "actions=", actions])
        # Also restart when it stops with an error code, not only when it crashes.
        self._commands.run([*sc, "failureflag", WINDOWS_NAME, "1"])

    def start(self) -> None:
        self._commands.run(["sc.exe", "start", WINDOWS_NAME])
        self._wait_for("active")

    def stop(self) -> None:
        if self.state() in ("inactive", "not-installed"):
            return
        self._commands.run(["sc.exe", "stop", WINDOWS_NAME])
        self._wait_for("inactive")

    def restart(self) -> None:
        self.stop()
        self.start()

    def state(self) -> str:
        """As windows_state; CommandError when sc.exe cannot tell (access denied, say)."""
        done = self._commands.run(["sc.exe", "query", WINDOWS_NAME], check=False)
        return windows_state(done.returncode, done.stdout)

    def unregister(self) -> None:
        self.stop()
        self._commands.run(["sc.exe", "delete", WINDOWS_NAME], check=False)

    def _wait_for(self, wanted: str) -> None:
        deadline = time.monotonic() + self._wait_seconds
        while (state := self.state()) != wanted:
            if time.monotonic() > deadline:
                raise CommandError(f"{WINDOWS_NAME} is {state}, not {wanted}")
            time.sleep(self._poll_seconds)


def image_path(program: Path, python: Path = Path(sys.executable)) -> str:
    """The service's command line, every path quoted (an unquoted path with a space in it is a
    known privilege escalation): the frozen exe, or Python with the service script."""
    if program.suffix.lower() == ".py":
        return f'"{python}" "{program}"'
    return f'"{program}"'


def windows_state(returncode: int, stdout: str) -> str:
    """sc.exe query's answer in systemd's words: active, inactive, activating, deactivating;
    not-installed for 1060 (ERROR_SERVICE_DOES_NOT_EXIST); CommandError for any other failure
    (access denied, the service manager unreachable): it says nothing about the service."""
    if returncode == 1060:
        return "not-installed"
    if returncode != 0:
        said = stdout.strip().splitlines()[-1:] or ["no output"]
        raise CommandError(f"sc.exe query {WINDOWS_NAME} failed ({returncode}): {said[0]}")
    words = {
        "RUNNING": "active",
        "STOPPED": "inactive",
        "START_PENDING": "activating",
        "STOP_PENDING": "deactivating",
    }
    for line in stdout.splitlines():
        if line.strip().startswith("STATE"):
            for word, state in words.items():
                if word in line:
                    return state
    return "unknown"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
