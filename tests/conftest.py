"""Shared fixtures: a digits repository built once, and real servers on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from flaskserve.models import digits

ROOT = Path(__file__).resolve().parent.parent
FLASKSERVE = [sys.executable, "-m", "flaskserve"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding the digits model (built once per test session)."""
    root = tmp_path_factory.mktemp("repo")
    digits.build(root / "digits")
    return root


@pytest.fixture(scope="session")
def digits_data() -> tuple:
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    return features.astype("float32"), labels


class Server:
    """A `flaskserve serve` subprocess; `url` is its base URL, `log` what it printed."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        ready_path: str = "/v2/health/live",
        timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"flaskserve-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [*FLASKSERVE, "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self._wait(ready_path, timeout)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log}")
            try:
                if requests.get(self.url + path, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture
def start_server() -> Iterator:
    """Start servers with `start_server(args, env=...)`; all are stopped after the test."""
    servers: list[Server] = []

    def start(args: list[str], **kwargs: object) -> Server:
        server = Server(args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def digits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One gunicorn server with two workers over a fresh digits repository, shared by a module."""
    root = tmp_path_factory.mktemp("served")
    digits.build(root / "digits")
    server = Server([str(root), "--workers", "2"])
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the default-model cache of tests out of the user's home."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("FLASKSERVE_CACHE_DIR", str(cache))
