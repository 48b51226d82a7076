"""systemd's notify protocol over $NOTIFY_SOCKET, and a watchdog that pings only while healthy."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


class Notifier:
    """Sends state lines to the service manager; does nothing when none is listening."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of newline-separated fields; False (logged) if it could not be sent.

        A notify failure never stops the agent: systemd then restarts it by its own rules.
        """
        if self.address is None:
            return False
        target = _socket_address(self.address)
        if target is None:
            log.warning("NOTIFY_SOCKET %r is not a unix socket; not notifying", self.address)
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(target)
                sock.sendall("\n".join(fields).encode("utf-8"))
        except OSError as exc:
            log.warning("could not notify the service manager: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY, *_status(status))

    def stopping(self, status: str = "") -> bool:
        return self.send(STOPPING, *_status(status))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG)

    def status(self, text: str) -> bool:
        return self.send(*_status(text))


def _status(text: str) -> list[str]:
    # STATUS= is one line: a newline would start another field.
    return [f"STATUS={' '.join(text.split())}"] if text else []


def _socket_address(address: str) -> str | None:
    """'@name' is Linux's abstract namespace (a leading NUL byte); '/path' a socket file."""
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between pings (half of $WATCHDOG_USEC), or None when no watchdog is asked for.

    $WATCHDOG_PID, when set, names the process the watchdog is meant for (not a child of it).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    meant_for = environ.get("WATCHDOG_PID", "")
    if meant_for and meant_for != str(os.getpid() if pid is None else pid):
        return None
    if not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 1_000_000 / 2


def answers_http(url: str, timeout_seconds: float) -> bool:
    """True when a server answers at url in time, whatever the status (a 503 is an answer)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with direct.open(url, timeout=timeout_seconds):
            return True
    except urllib.error.HTTPError as exc:
        exc.close()
        return True
    except (OSError, ValueError):
        return False


@dataclass
class Heartbeat:
    """A worker's sign of life: beat() each pass of its loop; stale once older than max_age."""

    name: str
    max_age_seconds: float
    monotonic: Callable[[], float] = time.monotonic
    last: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last = self.monotonic()

    def beat(self) -> None:
        self.last = self.monotonic()

    def is_fresh(self) -> bool:
        return self.monotonic() - self.last <= self.max_age_seconds


class Watchdog:
    """Pings WATCHDOG=1 every interval while every heartbeat is fresh and every check passes.

    A stuck or dead worker makes the pings stop, so systemd's WatchdogSec= kills and restarts
    the agent; the queue is on disk, so the restart resumes where it stopped.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_seconds: float | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self.interval_seconds = interval_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._heartbeats: list[Heartbeat] = []
        self._checks: dict[str, Callable[[], bool]] = {}
        self._withheld = False

    def heartbeat(self, name: str, max_age_seconds: float) -> Heartbeat:
        """A new heartbeat that must beat at least every max_age_seconds."""
        beat = Heartbeat(name, max_age_seconds, self._monotonic)
        with self._lock:
            self._heartbeats.append(beat)
        return beat

    def watch(self, name: str, is_alive: Callable[[], bool]) -> None:
        """A liveness check asked before each ping (a worker thread's is_alive, say)."""
        with self._lock:
            self._checks[name] = is_alive

    def stale(self) -> list[str]:
        """The names of the heartbeats that are late and of the checks that fail."""
        with self._lock:
            beats = list(self._heartbeats)
            checks = dict(self._checks)
        late = [b.name for b in beats if not b.is_fresh()]
        return late + [name for name, alive in checks.items() if not alive()]

    def tick(self) -> bool:
        """Ping if all is well (True); otherwise withhold the ping and say why, once."""
        stale = self.stale()
        if stale:
            if not self._withheld:
                log.error("watchdog: not pinging, stuck or dead: %s", ", ".join(stale))
                self._notifier.status(f"stuck: {', '.join(stale)}")
            self._withheld = True
            return False
        if self._withheld:
            log.warning("watchdog: every worker is alive again")
            self._withheld = False
        self._notifier.watchdog()
        return True

    def run(self, stop: threading.Event) -> None:
        """Tick until stop is set (just wait for it when no watchdog is asked for)."""
        if self.interval_seconds is None or not self._notifier.enabled:
            stop.wait()
            return
        self.tick()
        while not stop.wait(self.interval_seconds):
            self.tick()
