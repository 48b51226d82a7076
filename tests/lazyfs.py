"""LazyFS for the power-loss tests: mount it, send it fault commands, and cut the power.

LazyFS (github.com/dsrhaslab/lazyfs, MIT) is a FUSE file system with its own page cache: a
write stays in that cache until the file is fsync'd, so losing the cache loses exactly what a
power cut loses. It is built from the pinned sources in `../shared/tools/lazyfs/` by
`make lazyfs` (into build/lazyfs); LAZYFS_BIN names another binary.

Its fault FIFO has three pitfalls, each handled here: it reads 100 bytes at a time (a longer
command is cut: `command` refuses one), it ignores a second command that arrives in the same
read (`command` pauses after each), and with a completion FIFO configured its fault thread
blocks until someone opens that FIFO for reading and must be read line by line (a reader
thread is started before the file system).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import ROOT

BIN_ENV = "LAZYFS_BIN"
BUILT = ROOT / "build" / "lazyfs" / "lazyfs" / "lazyfs" / "build" / "lazyfs"
FIFO_READ_BYTES = 100  # LazyFS's read size on its fault FIFO
COMMAND_PAUSE_SECONDS = 0.2  # two commands in one read: the second is lost


def binary() -> Path:
    return Path(os.environ.get(BIN_ENV) or BUILT)


def missing() -> str | None:
    """Why LazyFS cannot run here, or None."""
    if os.geteuid() != 0:
        return "LazyFS mounts need root (FUSE)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if not os.access(binary(), os.X_OK):
        return f"no LazyFS binary at {binary()} (make lazyfs builds it; {BIN_ENV} names another)"
    return None


class LazyFS:
    """One LazyFS over a root directory that outlives it (the disk); mounted again after a cut.

    The paths are short on purpose: a fault command names a file by its path under the root,
    and the whole command must fit in the FIFO's 100-byte read.
    """

    def __init__(self, log_path: Path) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="lz", dir="/tmp"))
        self.root = self.base / "r"  # what survives a cut: the "disk"
        self.mount_point = self.base / "m"
        self.fifo = self.base / "f"
        self.done_fifo = self.base / "c"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.done: queue.Queue[str] = queue.Queue()
        for directory in (self.root, self.mount_point):
            directory.mkdir()
        for fifo in (self.fifo, self.done_fifo):
            os.mkfifo(fifo, 0o600)
        self.config = self.base / "lazyfs.toml"
        self.config.write_text(
            f'[faults]\nfifo_path="{self.fifo}"\nfifo_path_completed="{self.done_fifo}"\n'
            '[cache]\napply_eviction=false\n[cache.simple]\ncustom_size="512mb"\n'
            'blocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=""\n',
            encoding="utf-8",
        )

    def path(self, name: str) -> str:
        """A file under the mount as LazyFS names it in a fault command (its root path)."""
        return str(self.root / name)

    def mount(self, timeout_seconds: float = 10.0) -> None:
        threading.Thread(target=self._read_done, daemon=True).start()
        command = [str(binary()), str(self.mount_point), "--config-path", str(self.config)]
        options = ["-o", "modules=subdir", "-o", f"subdir={self.root}", "-f"]  # -f: our child
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([*command, *options], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_seconds
        while not os.path.ismount(self.mount_point):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"LazyFS did not mount: {self.log()}")
            time.sleep(0.02)

    def _read_done(self) -> None:
        """Completion lines, one by one, until this LazyFS closes its end (it died)."""
        with open(self.done_fifo, encoding="ascii") as fifo:
            for line in fifo:
                self.done.put(line.strip())

    def command(self, text: str) -> None:
        """One fault command on the FIFO, then a pause so the next one is read on its own."""
        data = (text + "\n").encode("ascii")
        assert len(data) <= FIFO_READ_BYTES, f"LazyFS would cut this command: {text}"
        fd = os.open(self.fifo, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        time.sleep(COMMAND_PAUSE_SECONDS)

    def clear_cache(self, timeout_seconds: float = 10.0) -> None:
        """Drop every byte not fsync'd, and wait until LazyFS says it has."""
        self.command("lazyfs::clear-cache")
        try:
            line = self.done.get(timeout=timeout_seconds)
        except queue.Empty:
            raise AssertionError(f"LazyFS never finished clear-cache: {self.log()}") from None
        assert line == "finished::clear-cache", line

    def wait_crashed(self, timeout_seconds: float) -> bool:
        """True once a crash fault has fired: LazyFS killed itself (SIGKILL)."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            return False
        assert code == -signal.SIGKILL, f"LazyFS exited {code}, not by a fault: {self.log()}"
        return True

    def power_off(self) -> None:
        """Whatever LazyFS still holds is lost (SIGKILL); the dead mount is detached."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        subprocess.run(["umount", "-l", str(self.mount_point)], capture_output=True, check=False)
        deadline = time.monotonic() + 10
        while os.path.ismount(self.mount_point) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.ismount(self.mount_point), "the LazyFS mount would not go away"
        with contextlib.suppress(queue.Empty):
            while True:
                self.done.get_nowait()

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]

    def remove(self) -> None:
        self.power_off()
        shutil.rmtree(self.base, ignore_errors=True)
