"""The one wrapper of a streamed HTTP response: it counts the bytes that pass (for metering) and
holds the stream to `--max-stream-bytes` and `--max-stream-seconds` (`core.stream_limits`).

Granian hands what a worker streams to an unbounded channel, so a stream to a client that
reads nothing never waits: its maker would go on for as long as the model yields, and the
channel grow with it. This wrapper stops it instead, for every streamed response without a
Content-Length (a generation's server-sent events, an application's own generator): the piece
that would take the stream past its bytes, or that comes after its time ran out, is not sent;
the body it wraps is closed (which cancels a generation and, at the response's close, frees its
admission slot), a warning is logged, and a `text/event-stream` gets one last event in its
front door's error shape (OpenAI's error object on OpenAI's routes, `{"error": "..."}`
elsewhere), whose message says which limit was reached and what to do. The time is checked at
each piece, an empty one included (the engine's "nothing yet"), so a stream that sends nothing
is stopped at its next piece after its time.

Every piece, an empty one included, is handed on unchanged and at once: the wrapper adds no
piece of its own but that last event, and buffers nothing. A response with a Content-Length
(a file) is counted but never cut. One generator frame per piece: it is on the hot path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator

import orjson
from flask import Response, request

from flaskserve.core.stream_limits import StreamLimitReached, StreamLimits
from flaskserve.protocol import openai
from flaskserve.protocol.http_context import current, route

log = logging.getLogger("flaskserve")

#: An event carrying the error of a stream stopped at a limit; None: not an event stream.
ErrorEvent = Callable[[StreamLimitReached], bytes] | None


def sent_counter(response: Response, limits: StreamLimits) -> Sent:
    """The wrapper of the streamed `response`'s body: the one already there, else a new one
    (held to `limits` unless the response declares its length); it becomes the body."""
    body = response.response
    if isinstance(body, Sent):
        return body
    bound = None
    if limits.any and response.content_length is None:
        bound = Bound(limits, _error_event(response))
    sent = Sent(body, bound)
    response.response = sent
    return sent


def bound_stream(response: Response, limits: StreamLimits) -> None:
    """Hold the streamed `response` to `limits` (when any is on and it has no length)."""
    if limits.any and response.content_length is None:
        sent_counter(response, limits)


class Bound:
    """What a stream is held to, and what to say when it is stopped."""

    __slots__ = ("cap", "deadline", "event", "key_id", "limits", "started", "where")

    def __init__(self, limits: StreamLimits, event: ErrorEvent) -> None:
        self.limits = limits
        self.cap = limits.byte_cap
        self.started = time.monotonic()
        self.deadline = limits.deadline(self.started)
        self.event = event
        # Read now: when the stream is stopped, the request context may be gone.
        self.where = f"{request.method} {request.path}"
        self.key_id = current().key_id

    def stop(self, sent: int, over_bytes: bool) -> StreamLimitReached:
        """The error of the stream stopped after `sent` bytes, logged."""
        seconds = time.monotonic() - self.started
        error = self.limits.reached(sent, seconds, over_bytes)
        log.warning(
            "stream of %s stopped at %s: %d bytes sent in %.1fs%s",
            self.where,
            error.flag,
            sent,
            seconds,
            f" (key {self.key_id!r})" if self.key_id else "",
        )
        return error


class Sent:
    """A streamed body that counts the bytes of the pieces it hands on: the bytes a stream sent
    (a client that left mid-stream got only what passed) are known at its close. With a
    `bound`, it stops the stream at its limits (see the module docstring)."""

    __slots__ = ("bound", "bytes", "pieces")

    def __init__(self, pieces: Iterable[str] | Iterable[bytes], bound: Bound | None) -> None:
        self.pieces = pieces
        self.bound = bound
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        bound = self.bound
        if bound is None:
            for piece in self.pieces:
                data = piece.encode() if isinstance(piece, str) else piece  # as Werkzeug does
                self.bytes += len(data)
                yield data
            return
        cap, deadline, clock = bound.cap, bound.deadline, time.monotonic
        timed = deadline != math.inf
        for piece in self.pieces:
            data = piece.encode() if isinstance(piece, str) else piece
            total = self.bytes + len(data)
            if total > cap or (timed and clock() > deadline):
                error = bound.stop(self.bytes, total > cap)
                self.close()  # the generation stops (and its slot is freed) now
                if bound.event is not None:
                    last = bound.event(error)
                    self.bytes += len(last)
                    yield last
                return
            self.bytes = total
            yield data

    def close(self) -> None:
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()


def _error_event(response: Response) -> ErrorEvent:
    """The last event of `response` stopped at a limit, in its front door's error shape; None
    when it is not a server-sent event stream."""
    if response.mimetype != "text/event-stream":
        return None
    declared = route(current())
    if declared is not None and declared.protocol == "openai":
        return _openai_event
    return _plain_event


def _openai_event(error: StreamLimitReached) -> bytes:
    body = openai.error_body(error.message, error.status_code, None, error.code)
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _plain_event(error: StreamLimitReached) -> bytes:
    return b"data: " + orjson.dumps({"error": error.message}) + b"\n\n"
