"""A deadline on reading a request's body, so a client that sends it slowly holds no thread
for long (R-NF-5).

Gunicorn's threaded workers park connections that are idle or still sending their request
header on a poller; a body, though, is read by the request's thread as the application
asks for it, from a blocking socket. This middleware gives the whole body one deadline
(:data:`BODY_SECONDS`): past it the read fails, the answer is a 408 problem detail, and the
thread is free again. In production a buffering reverse proxy in front (README.md) takes the
slow clients off the service altogether.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from werkzeug.exceptions import RequestTimeout

#: Seconds a client has to send the whole of a request's body.
BODY_SECONDS = 10.0


class _DeadlineInput:
    """``wsgi.input`` whose reads, together, must end before a deadline."""

    def __init__(self, stream: Any, client: socket.socket, deadline: float) -> None:
        self._stream = stream
        self._client = client
        self._deadline = deadline

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout("The request body was not received in time.")
        self._client.settimeout(remaining)

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        self._arm()
        try:
            return method(*args)
        except TimeoutError:
            raise RequestTimeout("The request body was not received in time.") from None
        finally:
            self._client.settimeout(None)

    def read(self, size: int | None = None) -> bytes:
        return self._call(self._stream.read, *(() if size is None else (size,)))

    def readline(self, size: int | None = None) -> bytes:
        return self._call(self._stream.readline, *(() if size is None else (size,)))

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._call(self._stream.readlines, *(() if hint is None else (hint,)))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class BodyDeadline:
    """WSGI middleware: under gunicorn, every request's body has :data:`BODY_SECONDS`."""

    def __init__(self, app: Callable[..., Iterable[bytes]], seconds: float = BODY_SECONDS) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        client = environ.get("gunicorn.socket")
        if isinstance(client, socket.socket):
            environ["wsgi.input"] = _DeadlineInput(
                environ["wsgi.input"], client, time.monotonic() + self.seconds
            )
        return self.app(environ, start_response)
