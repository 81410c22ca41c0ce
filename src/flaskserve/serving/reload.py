"""SIGHUP reloads a worker in place: the same process serves a freshly built app.

Replacing worker processes (Granian's own SIGHUP) loses requests: a stopping worker closes the
connections it accepted but had not read yet. So the master forwards SIGHUP to its workers
(`forward_to_workers`), and each worker builds a new app with the app factory, which re-reads
the models, the keys file and the repository, then swaps it into the `LiveApp` the engine
calls. No listener closes, so no connection is lost. Requests already running finish on the
old app (a streamed response, such as a generation, when its stream ends); the old app is then
retired: its gRPC server stops (the new one already listens on the same port, SO_REUSEPORT),
its usage is written, and its models are unloaded.

A reload that cannot build, or whose repository has a model (version) failing that served
before, is refused: the old app serves on and the reason is logged. Reloads run one at a time
in one thread; SIGHUPs received during a reload make one more reload after it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.wsgi import ClosingIterator

from flaskserve.app import Services, services_of
from flaskserve.core.repository import READY, ModelRepository
from flaskserve.protocol.http_context import STATE_KEY

if TYPE_CHECKING:
    from flaskserve.gate.gate import Gate
    from flaskserve.protocol.grpc.server import GrpcServer

log = logging.getLogger("flaskserve")
#: Seconds between looks at whether a replaced app still runs requests.
DRAIN_POLL_S = 0.01


class Generation:
    """One built app, its gRPC server, and the requests it is running."""

    def __init__(self, app: Flask, grpc: GrpcServer | None = None) -> None:
        self.app = app
        self.grpc = grpc
        #: The app's services; None for an app `create_app` did not make.
        self.services: Services | None = services_of(app)
        #: One item per request running on this app (`LiveApp`): deque appends and pops are
        #: atomic, and cost a tenth of what a lock does on the request path.
        self.running: deque[None] = deque()

    @property
    def gate(self) -> Gate | None:
        """The app's gate (keys, limits, admission), which the engine asks before a body."""
        return self.services.gate if self.services is not None else None

    @property
    def repository(self) -> ModelRepository | None:
        services = self.services
        return services.dataplane.repository if services is not None else None

    def failures(self) -> dict[str, str]:
        """Each model, or model version, that is not ready, with the reason."""
        repository = self.repository
        if repository is None:
            return {}
        failed = {}
        for entry in repository.entries():
            if entry.state != READY:
                failed[f"model {entry.name}"] = entry.reason
            for status in entry.versions.values():
                if status.state != READY:
                    failed[f"model {entry.name} version {status.version}"] = status.reason
        return failed

    def drain(self, timeout_s: float) -> bool:
        """Wait until no HTTP request runs on this app (False after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while self.running:
            if time.monotonic() >= deadline:
                return False
            time.sleep(DRAIN_POLL_S)
        return True

    def retire(self, grace_s: float) -> None:
        """Once this app serves nothing new: let its running calls end (at most `grace_s`),
        then free what it holds beyond memory and unload its models, so their memory goes."""
        stopped = self.grpc.stop(grace_s) if self.grpc is not None else None
        if not self.drain(grace_s):
            log.warning("requests still running on the replaced app after %.0f s", grace_s)
        if stopped is not None:
            stopped.wait(grace_s)
        if self.services is not None:
            self.services.control.close()
            self.services.gate.close()
        repository = self.repository
        if repository is not None:
            for entry in repository.entries():
                repository.unload(entry.name)  # a model whose unload fails is logged there


class LiveApp:
    """The WSGI callable the engine holds: it calls the current generation. Replacing
    `current` is one attribute store, so a request runs wholly on the old or the new app."""

    def __init__(self, current: Generation) -> None:
        self.current = current

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        current = self.current
        running = current.running
        running.append(None)
        try:
            result = current.app(environ, start_response)
        except BaseException:
            running.pop()
            raise
        state = environ.get(STATE_KEY)
        if state is not None and state.streaming:  # running until the server closes the stream
            return ClosingIterator(result, running.pop)
        running.pop()
        return result


class Reloader:
    """Reloads this worker's app when asked (`request`), one reload at a time."""

    def __init__(
        self,
        live: LiveApp,
        build_app: Callable[[], Flask],
        start_grpc: Callable[[Flask], GrpcServer | None],
        grace_s: float,
    ) -> None:
        self.live = live
        self._build_app = build_app
        self._start_grpc = start_grpc
        self._grace_s = grace_s
        self._wanted = threading.Event()
        self._lock = threading.Lock()  # a swap against a stop
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="flaskserve-reload", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Reload soon; asked again during a reload, reload once more after it."""
        self._wanted.set()

    def stop_grpc(self, grace_s: float) -> threading.Event | None:
        """The worker stops: no swap from now on; stop the current gRPC server."""
        with self._lock:
            self._stopping = True
            grpc = self.live.current.grpc
        return grpc.stop(grace_s) if grpc is not None else None

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self.reload()
            except Exception:
                log.exception("Worker reload failed (pid: %d)", os.getpid())
            # The app left behind (replaced or refused), its modules and models hold reference
            # cycles: only the cycle collector frees them, and an idle worker may not run it.
            gc.collect()

    def reload(self) -> bool:
        """Build, check and swap in a new app; False when the current one serves on."""
        old = self.live.current
        try:
            app = self._build_app()
        except Exception:
            log.exception("Worker reload failed (pid: %d); the current app serves on", os.getpid())
            return False
        if app is old.app:
            log.warning(
                "Worker reload (pid: %d): the app factory returned the app already served; "
                "restart the server to reload it",
                os.getpid(),
            )
            return False
        new = Generation(app)
        was_failing = old.failures()
        failing = {what: why for what, why in new.failures().items() if what not in was_failing}
        if failing:
            reasons = "; ".join(f"{what}: {why}" for what, why in sorted(failing.items()))
            log.error(
                "Worker reload refused (pid: %d), the current app serves on: %s",
                os.getpid(),
                reasons,
            )
            new.retire(0)
            return False
        try:
            new.grpc = self._start_grpc(app)
        except Exception:
            log.exception("Worker reload failed (pid: %d); the current app serves on", os.getpid())
            new.retire(0)
            return False
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self.live.current = new
        if stopping:
            new.retire(0)
            return False
        log.info("Worker reloaded (pid: %d)", os.getpid())
        # In this thread: the next reload waits, so at most two apps are ever loaded.
        old.retire(self._grace_s)
        return True


def forward_to_workers() -> None:
    """In the master, after the engine installed its signal handlers: SIGHUP reloads each
    worker in place instead of replacing the worker processes."""
    master = os.getpid()

    def forward(signum: int, frame: Any) -> None:
        if os.getpid() != master:  # a worker forked before it set its own handler
            return
        workers = child_pids()
        log.info("SIGHUP received: reloading %d workers in place", len(workers))
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, forward)


def child_pids() -> set[int]:
    """The processes this one started (the engine's workers), read from /proc without reaping
    any of them: the engine waits on its workers itself."""
    pids: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids.update(int(pid) for pid in children.read_text().split())
    return pids
