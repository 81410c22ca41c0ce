"""Streams that wait without holding a thread.

A generation's tokens are made by the model's batch thread; the reader of its stream would
otherwise block a thread on every token until the next one is made. When whoever drives the
stream can wait for a wake-up instead (the engine's event loop, `serving.engine`), it installs a
`Waker` in the stream's context; a stream that has nothing to give then arms the waker, hands
its producer the callable that fires it, and yields `NOTHING_YET` instead of blocking. Each
layer between the stream and the transport passes that event on untouched (a WSGI body as an
empty chunk), and the driver calls the stream again once the waker fired.

Without a waker (a gRPC thread, a request that reads the whole text, a debug server) a stream
blocks as any iterator does: a stream never depends on being driven this way, and one that
cannot wait cheaply (a Python model's generator, a seeded decode loop) simply never arms it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol

from flaskserve.core.model import TextEvent


class Waker(Protocol):
    def arm(self) -> Callable[[], None]:
        """Note that the stream is waiting; the callable returned wakes its driver (callable
        from any thread, more than once)."""
        ...


#: What a stream yields when it has nothing yet and armed the context's waker (compare by
#: identity: its counts are not the stream's).
NOTHING_YET = TextEvent("", 0, 0)

_waker: ContextVar[Waker | None] = ContextVar("flaskserve.waker", default=None)


def current() -> Waker | None:
    """The waker of the stream's driver, None when it can only block."""
    return _waker.get()


def install(waker: Waker) -> None:
    """Drive the streams read in this context with `waker` (the engine, once per stream)."""
    _waker.set(waker)
