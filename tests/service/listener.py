"""A stand-in for systemd's end of the notify protocol: a datagram socket that collects lines."""

from __future__ import annotations

import os
import socket
import time


class NotifyListener:
    """Bound on an abstract unix address (or a path); `address` is what NOTIFY_SOCKET is set to."""

    def __init__(self, path: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"till-agent-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(path)
            self.address = path
        self.received: list[str] = []

    def receive(self, timeout_seconds: float) -> str | None:
        """The next datagram, or None if none arrives in time."""
        self.sock.settimeout(timeout_seconds)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = data.decode("utf-8")
        self.received.append(message)
        return message

    def wait_for(self, field: str, timeout_seconds: float = 15.0) -> list[str]:
        """Datagrams until one holds `field` as a line; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout_seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and field in message.split("\n"):
                return self.received
        raise AssertionError(f"no {field} in {timeout_seconds}s; got {self.received}")

    def close(self) -> None:
        self.sock.close()
