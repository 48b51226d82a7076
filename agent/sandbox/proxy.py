"""The sandbox's public TCP front: pipes connections to waitress, or refuses/resets them."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0): the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TcpFront:
    """Listens on the public port; "refused" closes the listener, "reset" resets connections."""

    def __init__(
        self,
        host: str,
        port: int,
        backend: tuple[str, int],
        on_reset: Callable[[bytes], None],
    ) -> None:
        self.host = host
        self.port = port
        self._backend = backend
        self._on_reset = on_reset
        self._mode: str | None = None
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopped = threading.Event()

    def start(self) -> None:
        """Listen (on port, or a free one when 0) and accept on a daemon thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(POLL_SECONDS)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting = threading.Thread(
            target=self._accept_loop, args=(listener,), name="sandbox-front", daemon=True
        )
        self._accepting.start()

    def set_mode(self, mode: str | None) -> None:
        """refused: stop listening; either mode resets open connections when they next send.

        Open connections are reset lazily so that an answer in flight (the admin request that
        switched the outage on, say) still reaches its client.
        """
        with self._lock:
            self._mode = mode
        if mode == "refused":
            self._close_listener()
        elif self._listener is None and not self._stopped.is_set():
            self.start()

    def stop(self) -> None:
        """Stop listening, close every connection, join the threads."""
        self._stopped.set()
        self._close_listener()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            self._drop(conn)
        for thread in threads:
            thread.join(timeout=2)

    def _close_listener(self) -> None:
        listener, accepting = self._listener, self._accepting
        self._listener, self._accepting = None, None
        if listener is not None:
            listener.close()
        if accepting is not None and accepting is not threading.current_thread():
            accepting.join(timeout=2)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopped.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)
        reset(conn)

    def _serve(self, client: socket.socket) -> None:
        try:
            self._pipe(client)
        except OSError as exc:
            log.debug("sandbox front connection ended: %s", exc)
        finally:
            with self._lock:
                self._conns.discard(client)
                self._threads.discard(threading.current_thread())
            client.close()

    def _pipe(self, client: socket.socket) -> None:
        with self._lock:
            self._conns.add(client)
        with (
            socket.create_connection(self._backend, timeout=5) as upstream,
            selectors.DefaultSelector() as selector,
        ):
            # Each chunk goes on at once: with Nagle's algorithm a body sent after its headers
            # waits for the client's delayed ACK (tens of ms a response, not like a cloud).
            for end in (client, upstream):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self._stopped.is_set():
                for key, _ in selector.select(POLL_SECONDS):
                    if not self._forward(key.fileobj, key.data, client):  # type: ignore[arg-type]
                        return

    def _forward(self, source: socket.socket, target: socket.socket, client: socket.socket) -> bool:
        data = source.recv(65536)
        if not data:
            return False
        if source is client and self._mode is not None:
            self._on_reset(data)
            self._drop(client)
            return False
        target.sendall(data)
        return True
