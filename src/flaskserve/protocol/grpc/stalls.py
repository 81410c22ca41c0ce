"""Freeing the thread of a `ModelStreamInfer` call whose client stopped reading.

grpcio applies HTTP/2 flow control: once a client has left a few MiB unread (measured: 4 MiB of
text on a loopback connection), the handler thread's next send waits, in gRPC's C core, until
the client reads, the call's deadline passes or the client goes away; a call without a deadline
would hold its thread and admission slot for as long as its client stays connected. The
stream limits (`core.stream_limits`) are checked between pieces, which a thread waiting in a send
never reaches, so `Watchdog` watches each generation that has a time limit: when its time is up
and it has been waiting in one send for `SEND_GRACE_S` more, the call is cancelled (the client
sees CANCELLED, the send returns, and the generation is closed). A generation waiting on its
model is left alone: its next piece ends it with the limit's error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: How long a send may stay pending past a generation's time limit before its call is
#: cancelled (a client reading slowly, caught mid-send at the limit, is not cut for it); also
#: how often the watchdog looks.
SEND_GRACE_S = 1.0


class Sending:
    """A watched generation: its time limit, and since when it waits in a send, if it does."""

    __slots__ = ("cancel", "deadline", "since")

    def __init__(self, deadline: float, cancel: Callable[[], object]) -> None:
        #: `time.monotonic()` past which the generation is over its time.
        self.deadline = deadline
        #: Cancels the call (`grpc.ServicerContext.cancel`).
        self.cancel = cancel
        #: `time.monotonic()` when the send now pending began; None: not in a send.
        self.since: float | None = None

    def stuck(self, now: float) -> bool:
        """Over its time, and in one send for `SEND_GRACE_S` or more."""
        since = self.since
        return since is not None and now > self.deadline and now - since >= SEND_GRACE_S


class Watchdog:
    """One thread that, while any generation is watched, looks at each every `SEND_GRACE_S`
    and cancels the calls `Sending.stuck`; a scan of the running generations (at most the
    handler threads) once a second, and nothing while none runs."""

    def __init__(self) -> None:
        self._watched: set[Sending] = set()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, sending: Sending) -> None:
        with self._wake:
            if not self._watched:
                self._wake.notify()  # the thread waits for a first one
            self._watched.add(sending)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="grpc-stream-watchdog", daemon=True
                )
                self._thread.start()

    def forget(self, sending: Sending) -> None:
        with self._wake:
            self._watched.discard(sending)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._watched:
                    self._wake.wait()
                now = time.monotonic()
                stuck = [sending for sending in self._watched if sending.stuck(now)]
                self._watched.difference_update(stuck)
            for sending in stuck:
                sending.cancel()
            with self._wake:
                self._wake.wait(SEND_GRACE_S)


#: The process's watchdog (gRPC servers run one per worker process).
WATCHDOG = Watchdog()
