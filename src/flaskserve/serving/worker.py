"""What a worker process does besides serving HTTP: reload its app on SIGHUP
(`serving.reload`), stop its gRPC server when told to stop, and write the usage it still holds
once its last request is answered.

The engine (Granian) owns the worker's signal handlers and tells the app nothing of a stop, so
a watcher thread learns of it from a pipe: Python signal handlers write each signal's number
there (`_relay`). They run in the main thread, which runs Python while the app is built and
then runs the engine's event loop; the loop learns of a signal from its own wakeup fd and
runs the engine's handler for it, whatever the Python-level handler is, so `engine_listening`
can put `_relay` there once the engine has set its handlers. A stop that comes before the
engine's loop runs is sent again once it does: one held while the app is built (`_hold`), and
one that came after the engine gave the loop its handlers but before `engine_listening` ran,
which uvloop's handler drops while its loop is not running (the master then waited its whole
graceful timeout for a worker that never heard its SIGTERM); the signal's number is also in
the wakeup pipe `listen` set. Such a stop is sent again from a callback on the loop, which
runs only once the loop listens for signals (uvloop reports itself running a moment before it
listens: a stop sent again from the watcher thread in that moment was lost too).
The watcher reads the pipe in its own thread. On SIGHUP the
watcher asks the reloader for a reload. On SIGTERM or SIGINT the current gRPC server stops
taking calls at once, at the moment the engine stops taking HTTP requests. When the engine
has answered its last request, its serve call returns and the main thread ends; the watcher
then lets the running gRPC calls finish, writes the usage, and the process ends
(`multiprocessing`, which forked it, ends a child with `os._exit`: no seconds of interpreter
teardown, which a model's libraries such as torch cost).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from typing import TYPE_CHECKING, Any

from flaskserve.gate import metering
from flaskserve.observability import tallies

if TYPE_CHECKING:
    from flaskserve.serving.reload import Reloader

log = logging.getLogger("flaskserve")
#: Signals after which a worker stops taking work.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
#: Seconds between the watcher's looks at whether the main thread has ended.
POLL_S = 0.2


#: Stop signals received while the app was built, before the engine had its own handlers.
_early_stops: list[int] = []
#: The write end of the watcher's pipe (`listen`).
_pipe: list[int] = []
#: The engine's event loop, once it has its signal handlers (`engine_listening`).
_loop: list[Any] = []
#: The read end of the signal wakeup pipe set until the engine's loop sets its own (`listen`).
_wakeup: list[int] = []


def listen() -> int:
    """From the worker's main thread, first thing: route SIGHUP's number to a pipe (read by
    `watch`) instead of ending the process, and hold a stop signal received while the app is
    built, for the watcher to send again once the engine listens for it (until then it would
    be lost, and the master would wait its whole graceful timeout)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    _pipe[:] = [write_fd]
    for signum in STOP_SIGNALS:
        signal.signal(signum, _hold)
    signal.signal(signal.SIGHUP, _relay)
    # Every signal's number, whichever Python handler takes it, until a loop sets its own.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    _wakeup[:] = [wake_read]
    return read_fd


def _hold(signum: int, frame: object) -> None:
    _early_stops.append(signum)


def engine_listening(loop: Any) -> None:
    """In the main thread, once the engine's event loop has its signal handlers: pass every
    stop and SIGHUP to the watcher's pipe too. The loop learns of each signal from its own
    wakeup fd and runs the engine's handler: this replaces only the Python-level handler,
    which asyncio and uvloop leave doing nothing."""
    _loop[:] = [loop]
    for signum in (*STOP_SIGNALS, signal.SIGHUP):
        signal.signal(signum, _relay)
    loop.call_soon(_pass_on_early_stop)


def _woken() -> bytes:
    """The numbers of the signals received since `listen`, from its wakeup pipe."""
    if not _wakeup:
        return b""
    received = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(_wakeup[0], 64):
            received += chunk
    return received


def _relay(signum: int, frame: object) -> None:
    with contextlib.suppress(OSError):  # a full pipe: the watcher has numbers to read
        os.write(_pipe[0], bytes([signum]))
    if signum in STOP_SIGNALS and not _engine_running():
        # uvloop listens for signals only while it runs: hold the stop until it does.
        _early_stops.append(signum)
        if _loop:
            _loop[0].call_soon_threadsafe(_pass_on_early_stop)


def _engine_running() -> bool:
    return bool(_loop) and bool(_loop[0].is_running())


def _pass_on_early_stop() -> None:
    """On the engine's loop, which then listens for signals: send a stop received during
    start-up again (held by `_hold` or `_relay`, or only in the wakeup pipe: one that reached
    the loop's handler before the loop listened)."""
    stops = [*_early_stops, *(signum for signum in _woken() if signum in STOP_SIGNALS)]
    _early_stops.clear()
    if stops:
        os.kill(os.getpid(), stops[0])


def watch(read_fd: int, reloader: Reloader, grace_s: float) -> threading.Thread:
    """Start the watcher of this worker (from its main thread, before the engine serves)."""
    watcher = threading.Thread(
        target=_watch, args=(read_fd, reloader, grace_s), name="flaskserve-worker-exit"
    )
    watcher.start()  # not a daemon: the process waits for it after the engine returns
    return watcher


def _watch(read_fd: int, reloader: Reloader, grace_s: float) -> None:
    main = threading.main_thread()
    stopping = False
    while main.is_alive():
        ready, _, _ = select.select([read_fd], [], [], POLL_S)
        if not ready:
            continue
        received = set(os.read(read_fd, 64))
        if not stopping and received & STOP_SIGNALS:
            stopping = True
            reloader.stop_grpc(grace_s)
        elif not stopping and signal.SIGHUP in received:
            reloader.request()
    stopped = reloader.stop_grpc(grace_s)
    if stopped is not None:
        stopped.wait(grace_s)
    exiting()


def exiting() -> None:
    """After the worker's last request: write the usage it holds, drop its live gauges."""
    metering.close_all()
    tallies.worker_exiting()
    log.info("Worker exiting (pid: %d)", os.getpid())
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(OSError, ValueError):  # a closed stream: nothing to flush
            handler.flush()
