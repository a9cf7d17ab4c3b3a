"""A real ``sealroom serve`` (gunicorn) in a subprocess, and a minimal HTTP client for it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers and body."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient:
    """A minimal HTTP client (urllib): real requests to a real server."""

    def __init__(self, base: str, tokens: dict[str, str]) -> None:
        self.base = base
        self.tokens = tokens

    def request(self, *args: Any, **kwargs: Any) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request (:meth:`send`'s arguments)."""
        answer = self.send(*args, **kwargs)
        return answer.status, answer.headers.get_content_type(), answer.body

    def send(
        self,
        method: str,
        path: str,
        user: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> Answer:
        """One request's answer, headers included; OSError if the connection failed."""
        all_headers = dict(headers or {})
        if user is not None:
            all_headers["Authorization"] = f"Bearer {self.tokens[user]}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            f"{self.base}{path}", data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers, error.read())

    def post(
        self, path: str, user: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        status, _type, raw = self.request("POST", f"/api/v1{path}", user, body, headers)
        return status, json.loads(raw)


class Server:
    """``sealroom serve`` on a free port, in its own process group (so it can be killed)."""

    def __init__(
        self,
        trial: Any,
        directory: Path,
        workers: int,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.trial = trial
        self.directory = directory
        self.workers = workers
        self.environment = environment or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.client = HttpClient(f"http://127.0.0.1:{self.port}", trial.tokens)

    def start(self, healthy: bool = True) -> Server:
        """Start the server; wait until it is healthy (or, ``healthy=False``, answers at all)."""
        env = {
            **os.environ,
            "SEALROOM_DATABASE_URL": self.trial.url,
            "SEALROOM_INSTANCE_DIR": str(self.directory),
            "SEALROOM_KEYS_DIR": str(self.trial.settings.keys_dir),
            "SEALROOM_LOG_LEVEL": "WARNING",
            **self.environment,
        }
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "randomizer.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.client.base}/api/v1/health", timeout=2):
                    return self
            except urllib.error.HTTPError:
                if not healthy:
                    return self
                time.sleep(0.2)
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.directory / "server.log").read_text()) from None
                time.sleep(0.2)

    def worker_pids(self) -> set[int]:
        """The process ids of gunicorn's workers (the master's children)."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def worker_serving(self, connection: socket.socket) -> int | None:
        """The worker holding the server's end of ``connection`` (read from Linux's /proc)."""
        client_port = connection.getsockname()[1]
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port, remote_port = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if (local_port, remote_port) == (self.port, client_port):
                inode = fields[9]
        if inode is None:
            return None
        for pid in self.worker_pids():
            for fd in Path(f"/proc/{pid}/fd").glob("*"):
                try:
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        return None

    def kill(self) -> None:
        """SIGKILL the master and every worker at once: a crash, not a shutdown."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
