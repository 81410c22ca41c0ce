"""Streamed responses: the chunks of a WSGI body sent as the app makes them (`engine`).

The pool thread that ran the app goes on making the chunks and the event loop sends them, a few
chunks ahead at most (no second job: the first chunk costs no extra thread wake-up). A body
that can wait without a thread (a batched generation between its tokens: an empty chunk after
arming the stream's waker, `core.wakeup`) is handed to the loop, which makes each of its chunks
itself once the waker fired: a stream waiting for its next token holds no thread, and a token
crosses no thread between the model's batch and the socket. The wake-ups of all the streams a
decode step fed reach the loop in one cross-thread call.

Granian's RSGI stream transport queues what it is handed without a bound (its `send_bytes`
returns at once, measured), so `STREAM_WINDOW` bounds the maker thread's lead over the loop, not
what a client that reads nothing leaves buffered: the gate's stream limits bound that.

When the client is gone the body is closed at its next chunk, as it is at the end (WSGI
`close()`). The app failing mid-stream is an error logged with its traceback (the client only
sees the response cut short); the client going away is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from flaskserve.core import wakeup

log = logging.getLogger("flaskserve")

#: Chunks a pool thread made that the loop has not sent yet, at most.
STREAM_WINDOW = 8

_STREAM_END = object()
#: The maker handed the rest of a stream to the loop (`Stream._drive`).
_ON_LOOP = object()


class Streams:
    """The streamed responses of one worker's loop, whose wake-ups they share."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wakes = _Wakes(loop)

    def stream(
        self,
        context: contextvars.Context,
        where: str,
        status: int,
        headers: list[tuple[str, str]],
        body: Iterable[bytes],
    ) -> Stream:
        """The stream of `body`, its chunks made in the request's `context`."""
        return Stream(self._loop, _LoopWaker(self._wakes), context, where, status, headers, body)


class Stream:
    """One streamed body. The pool thread that ran the app goes on making its chunks (`make`),
    handing each to the loop, which sends them (`send`): one thread hop per chunk, the next made
    while this one is sent, at most `STREAM_WINDOW` waiting. When the body waits on its waker
    the loop takes over making them (`_drive`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        waker: _LoopWaker,
        context: contextvars.Context,
        where: str,
        status: int,
        headers: list[tuple[str, str]],
        body: Iterable[bytes],
    ) -> None:
        self._loop = loop
        self._waker = waker
        self._context = context
        self._where = where
        self._status = status
        self._headers = headers
        self._body = body
        self._chunks = iter(body)
        self._ready: asyncio.Queue[Any] = asyncio.Queue()
        self._room = threading.Semaphore(STREAM_WINDOW)
        self._gone = threading.Event()

    def make(self) -> None:
        """In a pool thread, outside the request's context: make and hand over chunks until the
        body ends (it is closed then) or waits on its waker (the loop goes on with it)."""
        handed = False
        try:
            handed = self._context.run(self._make)
        finally:  # posted once out of the context: the loop may enter it next
            self._loop.call_soon_threadsafe(
                self._ready.put_nowait, _ON_LOOP if handed else _STREAM_END
            )

    def _make(self) -> bool:
        waker, chunks, gone = self._waker, self._chunks, self._gone
        post, ready = self._loop.call_soon_threadsafe, self._ready.put_nowait
        wakeup.install(waker)
        try:
            while True:
                waker.armed = False
                chunk = next(chunks, None)
                if chunk is None:
                    break
                if chunk:
                    self._room.acquire()
                    if gone.is_set():
                        break
                    post(ready, chunk)
                elif gone.is_set():
                    break
                elif waker.armed:
                    return True
        except Exception:
            log.exception("the app failed streaming %s; the response was cut short", self._where)
        close_body(self._body)
        return False

    def abandon(self) -> None:
        """No one will send this stream (its request was cancelled): the maker stops at its next
        chunk and closes the body."""
        self._gone.set()
        self._room.release()

    async def send(self, proto: Any) -> None:
        """On the loop: send the chunks as they are made."""
        transport = proto.response_stream(self._status, self._headers)
        ready, room = self._ready, self._room
        try:
            while (chunk := await ready.get()) is not _STREAM_END:
                if chunk is _ON_LOOP:
                    await self._drive(transport)
                    return
                await transport.send_bytes(chunk)
                room.release()
        except Exception:  # the client went away: nothing to tell anyone
            log.debug("client left during the stream of %s", self._where, exc_info=True)
            self._gone.set()
            room.release()
            while (chunk := await ready.get()) is not _STREAM_END:  # until the body is closed
                if chunk is _ON_LOOP:
                    self._context.run(close_body, self._body)
                    return
                room.release()

    async def _drive(self, transport: Any) -> None:
        """The rest of a stream handed to the loop: make a chunk, send it; on an empty chunk
        wait for the waker the body armed."""
        waker, context, chunks = self._waker, self._context, self._chunks
        try:
            while True:
                waker.clear()
                try:
                    chunk = context.run(next, chunks, None)
                except Exception:
                    log.exception(
                        "the app failed streaming %s; the response was cut short", self._where
                    )
                    return
                if chunk is None:
                    return
                if chunk:
                    try:
                        await transport.send_bytes(chunk)
                    except Exception:  # the client went away: nothing to tell anyone
                        log.debug("client left during the stream of %s", self._where,
                                  exc_info=True)
                        return
                elif waker.armed:
                    await waker.fired.wait()
        finally:
            context.run(close_body, self._body)


class _Wakes:
    """Wake-ups fired from other threads, handed to the loop in one call for as many as fired
    before it ran: a decode step of 32 streams costs the batch thread one cross-thread call."""

    __slots__ = ("_fired", "_lock", "_loop", "_posted")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._fired: list[asyncio.Event] = []
        self._posted = False

    def fire(self, event: asyncio.Event) -> None:
        with self._lock:
            self._fired.append(event)
            if self._posted:
                return
            self._posted = True
        # A loop that closed (the worker is stopping) has no one left to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            fired, self._fired = self._fired, []
            self._posted = False
        for event in fired:
            event.set()


class _LoopWaker:
    """The waker of one stream (`core.wakeup`): fired from the producer's thread, it wakes the
    loop's wait; `armed` tells an empty chunk that waits from one that does not."""

    __slots__ = ("_wakes", "armed", "fired")

    def __init__(self, wakes: _Wakes) -> None:
        self._wakes = wakes
        self.fired = asyncio.Event()
        self.armed = False

    def arm(self) -> Callable[[], None]:
        self.armed = True
        return self._fire

    def clear(self) -> None:
        self.armed = False
        self.fired.clear()

    def _fire(self) -> None:
        self._wakes.fire(self.fired)


def close_body(body: Iterable[bytes]) -> None:
    """WSGI's `close()` of a body, when it has one (every body is closed, read or not)."""
    close = getattr(body, "close", None)
    if close is not None:
        close()
