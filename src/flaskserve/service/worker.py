"""gunicorn's threaded worker, telling the app how long each request waited for a thread.

In a gthread worker the queue that grows under overload is not in the app: it is the thread
pool's queue of connections with a request ready, in front of `--threads` busy threads. Nothing
in the WSGI environ says how long a request sat there, so this worker stamps each connection
when it is queued and, when a thread picks it up, leaves the wait in a thread-local for the
app (`queue_wait()`). The app answers a request that waited longer than `--max-queue-ms` with
503 + Retry-After at once, which costs microseconds, so a backlog drains quickly instead of
every request in it being served late. Requests that waited less are served as usual.

The worker also spreads connections over the workers (`accept`) and, when traffic is light,
serves a kept-alive connection's next request on the same thread (`handle`). A worker that has
stopped ends its process at once (`worker_exit`) instead of tearing its interpreter down.

`accept`, `enqueue_req`, `handle`, `set_accept_enabled` and `wait_for_and_dispatch_events` are
the gthread worker's own methods (gunicorn 27).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import select
import sys
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from flaskserve.service import metering

_local = threading.local()


def queue_wait() -> tuple[float, float] | None:
    """(seconds the current request waited for a thread, monotonic time it was queued), or
    None outside this worker."""
    return getattr(_local, "wait", None)


def _next_request_soon(conn: Any, timeout_ms: int) -> bool:
    """Whether the next request on a kept-alive connection arrives within `timeout_ms`."""
    if conn.parser.unreader.buf.getbuffer().nbytes:  # read ahead with the previous request
        return True
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(timeout_ms))


#: Seconds a worker that holds as many connections as it has threads stops accepting after each
#: new connection.
ACCEPT_PAUSE_S = 0.005
#: Milliseconds a thread that answered its worker's only connection waits for its next request.
STAY_MS = 2


class QueueTimedWorker(ThreadWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        self._submitted = 0  # connections handed to the thread pool (by the main thread only)
        self._handle_calls = itertools.count(1)
        self._handled = 0  # about how many of them a thread took up (an atomic `next`)
        self._finish_calls = itertools.count(1)
        self._finished = 0  # about how many handle calls ended
        self._accept_paused_until = 0.0
        #: What the process exits with once `worker_exit` has run; None leaves the exit to Python.
        self.exit_status: int | None = None
        try:
            super().init_process()  # serves until the worker stops
        except SystemExit as stop:  # SIGINT/SIGQUIT (quick stop) or SIGABRT (timed out)
            if self.booted and (stop.code is None or isinstance(stop.code, int)):
                self.exit_status = stop.code or 0
            raise
        self.exit_status = 0  # gunicorn's graceful stop: `run` returned

    def accept(self, listener: Any) -> None:
        super().accept(listener)
        if self.nr_conns >= self.cfg.threads:
            self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stay deaf to new connections while paused: another worker takes them meanwhile."""
        if (
            enabled
            and self.alive
            and self.nr_conns >= self.cfg.threads
            and time.monotonic() < self._accept_paused_until
        ):
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        paused_for = self._accept_paused_until - time.monotonic()
        if paused_for > 0 and not self._accepting and self.alive:  # wake when the pause ends
            timeout = min(timeout, paused_for)
        super().wait_for_and_dispatch_events(timeout)

    def enqueue_req(self, conn: Any) -> None:
        conn.flaskserve_queued_at = time.monotonic()
        self._submitted += 1  # only the main thread submits
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Serve a connection; then, while it is the only one this worker serves, stay on it
        for the next request.

        gthread hands a kept-alive connection back to its main loop after every request, and
        the next request comes back through the poller and the pool's queue: three thread
        hand-offs and their GIL hand-overs per request, which is most of a request's cost
        when traffic is light (W1 at c=1: 1,264 -> 1,945 req/s). Under load the hand-offs
        are shared by many requests, and a thread parked on each connection made the GIL's
        unfair scheduling show (W1 c=32 p99 46-52 ms against 29-30 ms, the same req/s), so a
        thread only stays while no other connection is served or waits (docs/benchmarks.md).
        """
        self._handled = next(self._handle_calls)
        queued_at = getattr(conn, "flaskserve_queued_at", None)
        if queued_at is None:
            _local.wait = None
        else:
            _local.wait = (time.monotonic() - queued_at, queued_at)
        try:
            keep = super().handle(conn)
            while keep is True and self.alive and self._alone():
                if not _next_request_soon(conn, STAY_MS):
                    break
                _local.wait = (0.0, time.monotonic())
                keep = super().handle(conn)
            return keep
        finally:
            self._finished = next(self._finish_calls)

    def _alone(self) -> bool:
        """No other connection is being served or waits for a thread in this worker."""
        return self._submitted <= self._handled and self._handled - self._finished <= 1


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in the worker after its last request: write the usage it still holds,
    then end the process."""
    metering.close_all()
    status = getattr(worker, "exit_status", None)
    if status is not None:
        exit_now(status)


def exit_now(status: int) -> None:
    """End a worker that has finished its work: run the atexit callbacks and flush, as
    `sys.exit` would, then skip the interpreter's teardown with `os._exit`.

    gunicorn ends a worker with `sys.exit`, and the interpreter then tears down every module
    and object the process holds before it ends. With the libraries a model brings (loading a
    scikit-learn model with skops imports torch, when it is installed) that took 5 s for one
    worker and 12 s for two at once on the shared 2-core development machine: a stopped server
    outlived a 10 s `--graceful-timeout` and was killed, and idle ones took seconds to stop.
    Nothing in that teardown matters to a forked worker whose requests, gRPC calls and usage
    are done; `multiprocessing` ends its forked children with `os._exit` too. Threads still
    running (a request past the graceful timeout) are not waited for: the master kills them.
    """
    atexit._run_exitfuncs()  # libraries' last flushes, logging's among them
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed or broken: nothing left to flush
            stream.flush()
    os._exit(status)
