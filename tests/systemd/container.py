"""Real systemd as PID 1 of a throw-away container made from this machine's own root.

util-linux `unshare` alone (no systemd-nspawn, no D-Bus on the host): tests/systemd/boot.sh
mounts an overlay of / with a tmpfs upper layer and execs /lib/systemd/systemd in it. Commands
run inside with `nsenter`; the container is powered off (SIGRTMIN+4 to its PID 1) at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
HIERARCHIES = ("systemd", "unified")  # what systemd 252 uses in a container on a hybrid host
SYSTEMD = Path("/lib/systemd/systemd")
TOOLS = ("unshare", "nsenter", "mount", "pivot_root", "mknod")


def missing_tools() -> list[str]:
    """What this machine lacks to boot the container; empty when it can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not SYSTEMD.exists():
        missing.append(f"{SYSTEMD} (Debian package: systemd)")
    if os.geteuid() != 0:
        missing.append("root (namespaces, mounts and cgroups need it)")
    missing += [
        f"the cgroup hierarchy {CGROUP_ROOT / name}"
        for name in HIERARCHIES
        if not (CGROUP_ROOT / name / "cgroup.procs").exists()
    ]
    if not Path("/usr/bin/python3").exists():
        missing.append("/usr/bin/python3 (Debian package: python3-venv)")
    return missing


class ContainerError(AssertionError):
    """The container did not boot or a command in it failed; carries what it printed."""


@dataclass
class Container:
    """One booted container. `run` executes argv inside it, as root, in all its namespaces."""

    work: Path  # a host directory for the root mount point, the layers and the boot log
    io: Path  # shown read-only at /io inside
    name: str = field(default_factory=lambda: f"till-agent-test-{os.getpid()}")
    process: subprocess.Popen[bytes] | None = None
    pid1: int = 0

    def boot(self, timeout_seconds: float = 60.0) -> str:
        """Start systemd and wait until it has finished booting; its state ('running', ...)."""
        for directory in ("root", "layers"):
            (self.work / directory).mkdir(parents=True, exist_ok=True)
        cgroups = [CGROUP_ROOT / h / self.name for h in HIERARCHIES]
        for cgroup in cgroups:
            cgroup.mkdir(exist_ok=True)
        # The launcher moves itself into our own cgroups, then becomes unshare (same pid).
        enter = 'for g in "$1" "$2"; do echo $$ > "$g/cgroup.procs"; done; shift 2; exec "$@"'
        argv = [
            "bash", "-c", enter, "_", *map(str, cgroups),
            "unshare", "--pid", "--fork", "--mount", "--cgroup", "--net", "--uts", "--ipc",
            "--propagation", "private", "--",
            "bash", str(HERE / "boot.sh"),
            str(self.work / "root"), str(self.work / "layers"), str(self.io),
        ]  # fmt: skip
        with (self.work / "boot.log").open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.pid1 = self._wait_for_pid1(timeout_seconds)
        deadline = time.monotonic() + timeout_seconds
        while self.run("test", "-S", "/run/systemd/private", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ContainerError(f"systemd's socket never appeared: {self.boot_log()}")
            time.sleep(0.1)
        done = self.run("systemctl", "is-system-running", "--wait", check=False)
        return done.stdout.strip()

    def _wait_for_pid1(self, timeout_seconds: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ContainerError(f"the container's launcher exited: {self.boot_log()}")
            for child in _children(self.process.pid):
                if _comm(child) == "systemd":
                    return child
            time.sleep(0.05)
        raise ContainerError(f"systemd did not start as PID 1: {self.boot_log()}")

    def run(
        self, *argv: str, check: bool = True, timeout_seconds: float = 120.0, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """argv inside the container (all its namespaces, as its root)."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p", "-C", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
            check=False,
        )
        if check and done.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def sh(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("bash", "-ec", script, check=check)

    def boot_log(self) -> str:
        path = self.work / "boot.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def poweroff(self, timeout_seconds: float = 30.0) -> None:
        """systemd's poweroff (SIGRTMIN+4 to PID 1), then the cgroups it leaves are removed."""
        if self.process is not None and self.process.poll() is None:
            if self.pid1:
                os.kill(self.pid1, signal.SIGRTMIN + 4)
            try:
                self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()  # the launcher; its pid namespace dies with it
                self.process.wait(10)
        for hierarchy in HIERARCHIES:
            top = CGROUP_ROOT / hierarchy / self.name
            if top.exists():
                for directory in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
                    if directory.is_dir():
                        _rmdir_quietly(directory)
                _rmdir_quietly(top)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = [int(child) for child in text.split()]
    return found + [grandchild for child in found for grandchild in _children(child)]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _rmdir_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
