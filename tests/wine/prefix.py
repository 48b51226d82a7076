"""A Wine prefix for the tests: Windows programs run from Linux, their output through a pipe.

Three things every caller would otherwise trip over (each seen under Wine 8.0):
- Python under Wine dies at start when a standard handle is a regular file, so output always
  comes back through a pipe;
- a program that starts `services.exe` or `explorer.exe` hands them its output pipe, which then
  never closes, so a run ends when the program exits, not when its output does;
- Wine stops the service manager, and every service, when the last ordinary process exits, so
  a keeper process holds the prefix up while the tests run.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

QUIET = {"WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="}  # no Mono/Gecko prompts


def windows_path(path: Path) -> str:
    """The path as a Windows program sees it: Wine maps the Linux root to drive Z:."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


@dataclass(frozen=True)
class Ran:
    returncode: int
    output: str

    def __str__(self) -> str:
        return f"exit {self.returncode}:\n{self.output[-4000:]}"


class Running:
    """A Windows program started in the background; its output collected as it comes.

    The reader owns its end of the pipe and closes it at end of file, which for a program that
    handed the pipe on to services.exe comes only when the prefix shuts down."""

    def __init__(self, process: subprocess.Popen[bytes], read_end: int) -> None:
        self.process = process
        self._read_end = read_end
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while chunk := os.read(self._read_end, 65536):
                self._chunks.append(chunk)
        finally:
            os.close(self._read_end)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")

    def wait(self, timeout: float) -> Ran:
        """The exit code once the program exits (its output pipe may stay open: see above)."""
        returncode = self.process.wait(timeout)
        self._reader.join(1.0)
        return Ran(returncode, self.output)

    def stop(self) -> None:
        """End this program (our own process) if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Prefix:
    """One WINEPREFIX, the Windows Python in it, and the processes the tests start in it."""

    def __init__(self, path: Path, python: Path) -> None:
        self.path = path
        self.python_exe = python
        self._keeper: Running | None = None

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The Linux environment for `wine`, less a display (nothing here may open a window)."""
        base = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        return {**base, **QUIET, "WINEPREFIX": str(self.path), **(extra or {})}

    def start(
        self, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Running:
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                ["wine", *argv],
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                env=self.env(env),
                cwd=cwd,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        return Running(process, read_end)

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Ran:
        running = self.start(argv, env=env, cwd=cwd)
        try:
            return running.wait(timeout)
        finally:
            running.stop()

    def python(self, *args: str, timeout: float = 120.0, **kwargs: object) -> Ran:
        """The Windows Python (UTF-8 mode: its output is decoded as UTF-8 here)."""
        argv = [str(self.python_exe), "-X", "utf8", *args]
        return self.run(argv, timeout=timeout, **kwargs)  # type: ignore[arg-type]

    def linux_path(self, windows: str) -> Path:
        """C:\\x or Z:\\x as the Linux path Wine keeps it at."""
        drive, rest = windows[0].lower(), windows[2:].replace("\\", "/").lstrip("/")
        return Path("/", rest) if drive == "z" else self.path / "drive_c" / rest

    def drive_c(self, *parts: str) -> Path:
        """C:\\<parts> as a Linux path."""
        return self.path.joinpath("drive_c", *parts)

    def boot(self) -> None:
        """A new prefix, fully started and settled (a keeper started too early got a second
        services.exe)."""
        subprocess.run(["wineboot", "--init"], env=self.env(), capture_output=True, check=True)
        self.wait_idle()

    def wait_idle(self) -> None:
        subprocess.run(["wineserver", "-w"], env=self.env(), check=True, timeout=120)

    def start_keeper(self) -> None:
        """A Windows Python that sleeps, started first: it starts the service manager and holds
        it (and every service) up until shutdown(). Whatever Wine reports of those processes
        comes out here: Event Log writes (Wine prints them as `err:eventlog:ReportEventW`)."""
        self._keeper = self.start(
            [str(self.python_exe), "-c", "import time; time.sleep(86400)"],
            env={"WINEDEBUG": "-all,err+eventlog"},
        )
        time.sleep(3)  # services.exe and its friends come up behind it

    @property
    def services_output(self) -> str:
        """What the service manager and the services wrote to the keeper's stderr so far."""
        return self._keeper.output if self._keeper is not None else ""

    def shutdown(self) -> None:
        """Every process of this prefix ended (all started by the tests), the server gone."""
        subprocess.run(["wineserver", "-k"], env=self.env(), check=False, timeout=60)
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
