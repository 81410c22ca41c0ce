"""Admission: at most `--threads` inference requests run at once in a worker; the rest wait a
bounded time for a slot, then get 503 + `Retry-After: 1`.

The engine gives the app no signal of how long a request queued in front of it (gunicorn's
gthread did, through a worker class that overrode its private methods), so the queue that
grows under overload is moved into the app, where it is bounded: the engine runs more threads
than there are slots (`serving.WAITING_THREADS` more), and a request that cannot get a slot
within `--max-queue-ms` is refused at once, costing microseconds, so a backlog drains quickly
instead of every request in it being served late (as Triton's `max_queue_size` does).

A request takes its slot after its body was read: a client that sends its body slowly waits
on its own thread, never on a slot the other requests need.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flaskserve.core.errors import Overloaded

#: WSGI environ key set while a request holds a slot.
SLOT_KEY = "flaskserve.admission.slot"


class Admission:
    """The slots of one worker, shared by its threads."""

    def __init__(self, slots: int, max_wait_s: float) -> None:
        self._slots = threading.BoundedSemaphore(max(1, slots))
        #: Seconds a request may wait for a slot; 0: as long as it takes (no shedding).
        self.max_wait_s = max_wait_s

    def enter(self, environ: dict[str, Any]) -> None:
        """Take a slot for the request of `environ`, or raise `Overloaded` after waiting
        `max_wait_s` for one."""
        if SLOT_KEY in environ:
            return
        if self._slots.acquire(blocking=False):
            environ[SLOT_KEY] = True
            return
        started = time.monotonic()
        if self.max_wait_s:
            if not self._slots.acquire(timeout=self.max_wait_s):
                waited = time.monotonic() - started
                raise Overloaded(
                    f"the server is overloaded: this request waited {waited:.1f}s for a "
                    "worker; retry after the time in Retry-After"
                )
        else:
            self._slots.acquire()
        environ[SLOT_KEY] = True

    def leave(self, environ: dict[str, Any]) -> None:
        """Give back the slot the request of `environ` holds, if it holds one."""
        if environ.pop(SLOT_KEY, False):
            self._slots.release()
