"""The deadline of the request being handled, for code that waits on its behalf.

A running `predict` cannot be interrupted from another thread, so a per-request timeout can only
bound the *waiting*: for a slot in a batch (the batcher stops waiting for the request's future
and takes it out of the queue if no batch has picked it up yet), or before the model starts. The
gate sets the deadline around its call into the data plane; code that waits reads
`remaining()` without any new parameter threading through the protocol layers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from flaskserve.core.errors import FlaskServeError

_deadline: ContextVar[float | None] = ContextVar("flaskserve_deadline", default=None)


class RequestTimeout(FlaskServeError):
    """The request ran out of its time budget while waiting; the client may retry later."""

    status_code = 504


@contextmanager
def until(deadline: float | None) -> Iterator[None]:
    """Run the block with `deadline` (a `time.monotonic()` value, or None for none)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current request's deadline (may be <= 0); None without one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def expired(what: str) -> RequestTimeout:
    return RequestTimeout(
        f"the request timed out while {what}; the server is busy, retry later or raise "
        "--request-timeout-ms"
    )
