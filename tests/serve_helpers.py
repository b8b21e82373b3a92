"""Run the real `vidrec serve` as a subprocess and watch it from outside: its HTTP API, its log, and the Kafka
topic it publishes to (read by a real consumer in a thread)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for  # noqa: F401  (re-exported for the serve tests)
from kafka import KafkaConsumer

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def services(*args: str) -> str:
    """``scripts/services ARGS``, e.g. ``services("stop", "kafka")`` for an outage; its stdout (``status``'s
    ``NAME=value`` lines). Fails the test when the script does."""
    done = subprocess.run([str(REPO / "scripts" / "services"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, f"scripts/services {' '.join(args)} failed:\n{done.stderr[-2000:]}"
    return done.stdout


@dataclass(frozen=True)
class Response:
    status: int
    body: dict[str, Any]


class ServeProcess:
    """`vidrec serve ...` with its stderr in ``log_path``; ``api(...)`` talks to its HTTP API."""

    def __init__(self, args: list[str], *, log_path: Path, http_port: int, env: dict[str, str] | None = None,
                 http_host: str = "127.0.0.1") -> None:
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{http_port}"
        full_env = dict(os.environ)
        full_env.pop("VIDREC_DEBUG", None)
        full_env.pop("VIDREC_API_TOKEN", None)
        full_env.update(env or {})
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", *args, "--http", f"{http_host}:{http_port}"],
            cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None,
            raw: bytes | None = None) -> Response:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return Response(response.status, json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, json.loads(exc.read() or b"{}"))

    def healthy(self) -> bool:
        assert self.alive(), f"vidrec serve exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
        try:
            return self.api("GET", "/healthz").status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def streams(self) -> dict[str, dict[str, Any]]:
        response = self.api("GET", "/streams")
        assert response.status == 200, response
        return {s["id"]: s for s in response.body["streams"]}

    def stream(self, stream_id: str) -> dict[str, Any] | None:
        response = self.api("GET", f"/streams/{stream_id}")
        return response.body if response.status == 200 else None

    def terminate(self, timeout_s: float = 120.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def final(self) -> dict[str, Any]:
        """The final counters the supervisor logs as one JSON line at exit."""
        lines = [line for line in self.log_text().splitlines() if line.startswith("vidrec: final: ")]
        assert len(lines) == 1, self.log_text()[-3000:]
        return json.loads(lines[0][len("vidrec: final: "):])

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@dataclass(frozen=True)
class Message:
    value: dict[str, Any]
    key: bytes
    arrived: float  # wall clock, when this consumer got it


class TopicReader:
    """Reads a Kafka topic from its start in a thread; ``of(stream_id)`` lists what came, in order."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
            group_id=None,
        )
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __enter__(self) -> "TopicReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            batches = self._consumer.poll(timeout_ms=200)
            now = time.time()
            with self._lock:
                for records in batches.values():
                    for record in records:
                        self._messages.append(Message(json.loads(record.value), record.key, now))

    def all(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def of(self, stream_id: str) -> list[Message]:
        return [m for m in self.all() if m.value["stream_id"] == stream_id]

    def count(self, stream_id: str) -> int:
        return len(self.of(stream_id))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
