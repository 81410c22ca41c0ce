"""Admission: at most `--threads` inference requests run at once in a worker; the rest wait a
bounded time for a slot, then get 503 + `Retry-After: 1`.

The engine adapter (`engine`) runs the app in a pool of `--threads` + a few threads, and
notes in the request's state when a request (its body read) joined that pool's queue
(`RequestState.queued`).
The wait for a slot counts from then: a request that cannot get a slot within `--max-queue-ms`
of joining the queue is refused at once, costing microseconds, so a backlog drains quickly
instead of every request in it being served late (as Triton's `max_queue_size` does).

A request takes its slot after its body was read, which the engine does on its event loop: a
client that sends its body slowly holds no thread and no slot. A streamed response (a
generation) keeps its slot until the stream is closed, not only until its view returned
(`defer`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from flaskserve.core.errors import Overloaded


class Holder(Protocol):
    """What asks for a slot: an HTTP request's state (`protocol.http_context.RequestState`), or
    a `Ticket` (a gRPC call)."""

    #: Holds a slot now.
    slot: bool
    #: `time.monotonic()` when the request was queued for a thread; None: when it asks.
    queued: float | None


class Ticket:
    """A `Holder` of its own, for a call that has no HTTP request state (gRPC)."""

    __slots__ = ("queued", "slot")

    def __init__(self, queued: float | None = None) -> None:
        self.slot = False
        self.queued = queued


class Admission:
    """The slots of one worker, shared by its threads, given out first come, first served.

    A freed slot is handed to the request that has waited longest, never taken by one that just
    arrived: with a plain semaphore, newcomers won most slots under load and the oldest waiters
    ran out their `--max-queue-ms` (W1 at c=1024: 503s and a 2 s p99).
    """

    def __init__(self, slots: int, max_wait_s: float) -> None:
        self._lock = threading.Lock()
        self._free = max(1, slots)
        self._waiters: deque[threading.Lock] = deque()
        #: Seconds a request may wait for a slot; 0: as long as it takes (no shedding).
        self.max_wait_s = max_wait_s

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    def enter(self, holder: Holder) -> None:
        """Take a slot for `holder`, or raise `Overloaded` after waiting `max_wait_s` for
        one."""
        if holder.slot:
            return
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                holder.slot = True
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        started = holder.queued or time.monotonic()
        timeout = max(0.0, started + self.max_wait_s - time.monotonic()) if self.max_wait_s else -1
        if not waiter.acquire(timeout=timeout):
            with self._lock:
                try:
                    self._waiters.remove(waiter)
                except ValueError:  # handed a slot as the wait ran out: keep it
                    pass
                else:
                    waited = time.monotonic() - started
                    raise Overloaded(
                        f"the server is overloaded: this request waited {waited:.1f}s for a "
                        "worker; retry after the time in Retry-After"
                    )
        holder.slot = True

    def leave(self, holder: Holder) -> None:
        """Give back the slot `holder` holds, if it holds one: to the oldest waiter, else to
        the free ones."""
        if not holder.slot:
            return
        holder.slot = False
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1

    def defer(self, holder: Holder) -> Callable[[], None]:
        """Move the slot `holder` holds out of it (so the request's teardown keeps it) into the
        returned function, which gives it back once, when called: a stream holds its slot until
        the server closes it."""
        held = Ticket()
        held.slot, holder.slot = holder.slot, False

        def release() -> None:
            self.leave(held)

        return release
