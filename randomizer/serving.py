"""The gunicorn worker ``sealroom serve`` runs: threads, and no read without a deadline.

Gunicorn's threaded worker parks idle connections on a poller, but once a connection's first
bytes arrive a thread reads the rest of its request from a blocking socket: three clients
that sent half a request header held the sync workers of the landed service for ever, and
a few more would hold every thread of these. Here every client socket reads with a timeout
(:data:`READ_SECONDS` without a byte, then the connection is closed and its thread freed),
whatever gunicorn asks of it; :mod:`randomizer.wsgi` also bounds a whole body. In production
a buffering reverse proxy in front (README.md) takes slow clients off the service anyway.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from randomizer.api.problems import (
    PROBLEM_JSON,
    SECURITY_HEADERS,
    add_security_headers,
    database_unavailable,
    http_problem,
)
from randomizer.db import DATABASE_UNAVAILABLE
from randomizer.rendering import render_json

log = logging.getLogger(__name__)

#: Seconds a client socket may stay silent in the middle of a request.
READ_SECONDS = 10.0


class _DeadlineSocket(socket.socket):
    """A client socket whose blocking mode always has a timeout."""

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(READ_SECONDS)
        else:
            super().setblocking(False)


def _with_deadline(client: socket.socket) -> socket.socket:
    wrapped = _DeadlineSocket(client.family, client.type, client.proto, fileno=client.detach())
    wrapped.setblocking(True)
    return wrapped


def write_problem(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """gunicorn's own error answers (a request line or a header over 8,190 bytes, a request
    it cannot parse) as RFC 9457 problem details, like every other answer of the service.

    Replaces ``gunicorn.util.write_error`` (an HTML page) in the workers this module runs.
    """
    body = render_json(http_problem(status, reason, message or reason)).encode("ascii")
    headers = {
        "Connection": "close",
        "Content-Type": PROBLEM_JSON,
        **SECURITY_HEADERS,
        "Content-Length": str(len(body)),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    head += "\r\n"
    util.write_nonblock(sock, head.encode("latin-1") + body)


def gunicorn_settings(host: str, port: int, workers: int, threads: int) -> dict[str, Any]:
    """The settings ``sealroom serve`` runs gunicorn with (``benchmarks/load.py`` serves its
    yardstick under the same)."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        # Threaded workers whose client sockets never wait without a deadline: a few slow
        # clients cannot take every worker (this module's docstring says how).
        "worker_class": "randomizer.serving.Worker",
        "threads": threads,
        "timeout": 60,
        "keepalive": 5,
        # A request line of a few thousand characters must reach the application's own error
        # handling (a problem detail), not gunicorn's HTML 400.
        "limit_request_line": 8190,
        # Each header at most 8,190 bytes, at most 100 of them (gunicorn's defaults, stated):
        # beyond, a 431 problem detail (write_problem below).
        "limit_request_field_size": 8190,
        "limit_request_fields": 100,
        "accesslog": "-",
        # No management socket in the home directory: one path shared by every server on the
        # machine, and an admin channel the service does not need.
        "control_socket_disable": True,
    }


class Worker(ThreadWorker):
    """gunicorn's ``gthread`` worker: client sockets reading with a timeout, and its own
    error answers as problem details."""

    def init_process(self) -> None:
        util.write_error = write_problem
        super().init_process()

    def accept(self, listener: Any) -> None:
        try:
            client, address = listener.accept()
            self.nr_conns += 1
            conn = TConn(self.cfg, _with_deadline(client), address, listener.getsockname())
            self.enqueue_req(conn)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Seconds between two attempts to build the application while the database is unavailable.
BUILD_INTERVAL = 1.0


class BuiltOnceTheDatabaseAnswers:
    """A worker's application, built (``create_app`` reads the trial from the database) as
    soon as the database answers: at once, or on a later request.

    A gunicorn worker whose application raises while loading stops the whole server ("worker
    failed to boot"). A worker started during a database outage (a crashed worker's
    replacement, or the server started before the database) would do exactly that; this one
    answers every request with the 503 problem detail instead, and serves normally from the
    first request after the database is back. Any other failure to build (a schema or keys
    it cannot serve) still raises: at boot, stopping the server; on a later attempt, in the
    request, which gets gunicorn's 500 problem detail while the error is logged.
    """

    def __init__(self, build: Callable[[], WsgiApp], interval: float = BUILD_INTERVAL) -> None:
        self._build = build
        self._interval = interval
        self._app: WsgiApp | None = None
        self._lock = threading.Lock()
        self._next_attempt = 0.0
        self._attempt()

    def _attempt(self) -> WsgiApp | None:
        # One thread builds; the others answer 503 meanwhile instead of queueing behind it.
        if not self._lock.acquire(blocking=False):
            return self._app
        try:
            if self._app is None and time.monotonic() >= self._next_attempt:
                try:
                    self._app = self._build()
                except DATABASE_UNAVAILABLE as error:
                    self._next_attempt = time.monotonic() + self._interval
                    log.warning(
                        "database unavailable (%s): answering 503 until it is back",
                        type(error).__name__,
                    )
            return self._app
        finally:
            self._lock.release()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        app = self._app or self._attempt()
        if app is None:
            return add_security_headers(database_unavailable())(environ, start_response)
        return app(environ, start_response)
