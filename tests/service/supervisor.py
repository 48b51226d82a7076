"""A small stand-in for systemd running one installed unit: the parts of it the agent meets.

It reads the unit and its drop-ins as installed, and does what systemd would: sets the
*_DIRECTORY variables, copies each LoadCredential= into a fresh credentials directory, speaks
the notify protocol, restarts on failure after RestartSec=, and stops with SIGTERM within
TimeoutStopSec=. What it does not do: sandboxing (ProtectSystem= and friends, the user
switch) and cgroups; `systemd-analyze verify` and `security` check those lines instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.service.listener import NotifyListener


def read_unit(unit_file: Path) -> dict[str, list[str]]:
    """Key → values of the unit and its drop-ins (<unit>.d/*.conf), in systemd's order."""
    settings: dict[str, list[str]] = {}
    dropins = sorted((unit_file.parent / (unit_file.name + ".d")).glob("*.conf"))
    for path in [unit_file, *dropins]:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@dataclass
class Directories:
    """Where StateDirectory= and friends point, under the install's root."""

    configuration: Path
    state: Path
    logs: Path
    credentials: Path


@dataclass
class Supervisor:
    unit: dict[str, list[str]]
    dirs: Directories
    root: Path
    listener: NotifyListener
    watchdog_seconds: float  # WatchdogSec=, shortened so a test sees several pings
    restart_seconds: float  # RestartSec=, shortened likewise
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def one(self, key: str) -> str:
        return self.unit[key][-1]

    def seconds(self, key: str) -> float:
        return float(self.one(key).rstrip("s"))

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TILL_AGENT", "WATCHDOG"))}
        env.update(
            NOTIFY_SOCKET=self.listener.address,
            WATCHDOG_USEC=str(int(self.watchdog_seconds * 1_000_000)),
            CONFIGURATION_DIRECTORY=str(self.dirs.configuration),
            STATE_DIRECTORY=str(self.dirs.state),
            LOGS_DIRECTORY=str(self.dirs.logs),
            CREDENTIALS_DIRECTORY=str(self.dirs.credentials),
        )
        return env

    def load_credentials(self) -> None:
        """LoadCredential=NAME:PATH → a read-only copy at $CREDENTIALS_DIRECTORY/NAME."""
        shutil.rmtree(self.dirs.credentials, ignore_errors=True)
        self.dirs.credentials.mkdir(mode=0o700, parents=True)
        for spec in self.unit.get("LoadCredential", []):
            name, _, source = spec.partition(":")
            path = Path(source)
            if not path.is_relative_to(self.root):  # the shipped unit names the real /etc
                path = self.root / path.relative_to("/")
            target = self.dirs.credentials / name
            shutil.copyfile(path, target)
            target.chmod(0o400)

    def start(self) -> list[str]:
        """ExecStart=, then wait for READY=1 within TimeoutStartSec=; the datagrams seen."""
        self.load_credentials()
        argv = shlex.split(self.one("ExecStart"))
        self.process = subprocess.Popen(
            argv, env=self.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.starts += 1
        return self.listener.wait_for("READY=1", self.seconds("TimeoutStartSec"))

    def died_on_failure(self) -> bool:
        """Restart=on-failure's test: a non-zero exit or a signal other than a clean stop's."""
        assert self.process is not None
        code = self.process.wait(30)
        return code != 0

    def restart_if_failed(self) -> bool:
        if self.one("Restart") == "on-failure" and self.died_on_failure():
            time.sleep(self.restart_seconds)
            self.start()
            return True
        return False

    def stop(self) -> tuple[int, float]:
        """SIGTERM; STOPPING=1 and the exit within TimeoutStopSec= (else SIGKILL, as systemd)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.listener.wait_for("STOPPING=1", self.seconds("TimeoutStopSec"))
            code = self.process.wait(self.seconds("TimeoutStopSec"))
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
        return code, time.monotonic() - started
