"""A TCP proxy in front of PostgreSQL that can lose a connection exactly at a COMMIT.

A connection lost during COMMIT leaves its outcome unknown to the client: the server may
have committed (the answer was lost on the way back) or not (the COMMIT never arrived). The
proxy makes either happen on demand, on a real server, to a real driver: it passes bytes
through unchanged until it is armed, then cuts the next connection that sends ``COMMIT``
either before the server sees it or right after the server has answered it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from tests.randomizer.served import free_port

#: psycopg commits with the simple query protocol: a Query message holding this text.
COMMIT = b"COMMIT\x00"
BEFORE, AFTER = "before", "after"


class CommitCutter:
    """Forwards 127.0.0.1:``port`` to ``upstream_port``; ``arm(BEFORE | AFTER)`` cuts once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._armed: str | None = None
        self.cut = threading.Event()
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def arm(self, when: str) -> None:
        """Cut the next connection that commits, ``BEFORE`` or ``AFTER`` the server commits."""
        with self._lock:
            self._armed = when
            self.cut.clear()

    def _take(self, when: str) -> bool:
        with self._lock:
            if self._armed == when:
                self._armed = None
                return True
            return False

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is down: so is this connection
                _close(client)
                continue
            self._sockets += [client, upstream]
            committing = threading.Event()
            threading.Thread(
                target=self._to_server, args=(client, upstream, committing), daemon=True
            ).start()
            threading.Thread(
                target=self._to_client, args=(upstream, client, committing), daemon=True
            ).start()

    def _to_server(
        self, client: socket.socket, upstream: socket.socket, committing: threading.Event
    ) -> None:
        for data in _chunks(client):
            if COMMIT in data:
                if self._take(BEFORE):
                    self._sever(client, upstream)
                    return
                committing.set()
            if not _send(upstream, data):
                break
        _close(upstream)

    def _to_client(
        self, upstream: socket.socket, client: socket.socket, committing: threading.Event
    ) -> None:
        for data in _chunks(upstream):
            # The server's answer to a COMMIT: the transaction is durable; the client never
            # hears of it.
            if committing.is_set():
                committing.clear()
                if self._take(AFTER):
                    self._sever(client, upstream)
                    return
            if not _send(client, data):
                break
        _close(client)

    def _sever(self, client: socket.socket, upstream: socket.socket) -> None:
        self.cut.set()  # before the client can see the cut
        _close(client)
        _close(upstream)

    def close(self) -> None:
        self._closing = True
        _close(self._listener)
        for sock in self._sockets:
            _close(sock)


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        yield data


def _send(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False if the other side has gone (the pump then ends)."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
