"""Real `flaskserve serve` processes for tests, on free loopback ports.

A module of its own (not conftest.py) so test files can import it by a name no other file has.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from waiting import eventually

FLASKSERVE = [sys.executable, "-m", "flaskserve"]

#: The test now running (set by suite_policy.py), so a server started by a test not marked
#: `e2e` fails at once instead of slowing down `make test-fast`.
running_test: Any = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A `flaskserve serve` subprocess; `url` is its base URL, `log` what it printed."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        ready_path: str = "/v2/health/live",
        timeout: float = 60.0,
        cwd: Path | None = None,
    ) -> None:
        if running_test is not None and running_test.get_closest_marker("e2e") is None:
            raise RuntimeError(
                f"{running_test.nodeid} starts a server but is not marked e2e: use the "
                "start_server or digits_server fixture, or mark it `pytest.mark.e2e`"
            )
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
            cwd=cwd,
        )
        try:
            self._wait(ready_path, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, path: str, timeout: float) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log}")
            try:
                return requests.get(self.url + path, timeout=5).status_code == 200
            except requests.RequestException:
                return False

        eventually(answers, timeout=timeout, message=lambda: f"{path} answers 200:\n{self.log}")

    @property
    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Until `text` was logged `count` times: "model m version 1 is ready" once per worker
        tells that every worker booted (ready routes answer as soon as one has)."""
        eventually(lambda: self.log.count(text) >= count, timeout=timeout,
                   message=lambda: f"{text!r} is logged {count} times:\n{self.log}")

    def worker_pids(self) -> set[int]:
        """The workers' process ids (the children of the server process)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {int(child) for child in children}

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log.close()


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and its children (started with `start_new_session=True`), then
    SIGKILL them if they are still there after 15 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
