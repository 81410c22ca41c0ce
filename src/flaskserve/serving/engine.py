"""The WSGI app served over Granian's RSGI interface: bodies are read on the event loop, the app
runs in a bounded thread pool.

Granian's WSGI interface hands a request to a Python thread as soon as its headers are read, and
that thread then waits, in Rust, for the body for as long as the client takes: 150 sockets that
stalled mid-body took all of a worker's threads. Here the body is read on the worker's event
loop instead, where a waiting request costs a coroutine, not a thread, and within a deadline
(`--body-timeout-ms`, counted from the headers): past it the client gets 408 and the connection
is closed. Only a request whose body has arrived is handed to the pool, whose `--threads` +
`SPARE_THREADS` threads run the unchanged WSGI app.

A body is never read past `--max-request-bytes`: a declared length over it is not read at all
(the app refuses it from its Content-Length, 413 in its front door's shape), a chunked body
stops at one byte past the limit (enough for the app to tell it is too large). Nor is it read
when the app says it will refuse the request without it (`admits_body`: with API keys, a
request that presents no valid key gets its 401 at once, so a client without a key cannot
make a worker buffer a body).

A response with a Content-Length (every non-streamed Flask response) is joined and sent by the
thread that made it. Any other response is streamed chunk by chunk as the app yields it
(`streams`): a pool thread makes the chunks and the loop sends them, or the loop makes them itself
for a body that waits for its next chunk without a thread (a batched generation).
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from flaskserve.observability.logs import escape
from flaskserve.protocol.http_context import STATE_KEY, RequestState
from flaskserve.serving.streams import Stream, Streams, close_body

log = logging.getLogger("flaskserve")
#: Pool threads beyond `--threads`: cheap routes (health, metrics, model metadata) still get a
#: thread while every inference slot is taken (`gate.admission`).
SPARE_THREADS = 4
#: A response with a Content-Length up to this is sent in one piece; larger ones stream.
BUFFERED_RESPONSE_BYTES = 1 << 20

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Headers that are not `HTTP_*` in a WSGI environ.
_CGI_HEADERS = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


class Pool:
    """`size` threads that run jobs first come, first served (a C queue: no Python lock)."""

    def __init__(self, size: int, name: str = "flaskserve-app") -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            try:
                job()
            except BaseException:  # a job reports its own errors; the thread serves on
                log.exception("unexpected error in the app pool")

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class WsgiOverRsgi:
    """An RSGI application (`__rsgi__`) serving the WSGI application `app`."""

    def __init__(
        self,
        app: WsgiApp,
        threads: int,
        max_body_bytes: int,
        body_timeout_s: float,
        on_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None,
        admits_body: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.app = app
        self._admits_body = admits_body
        self.threads = threads + SPARE_THREADS
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._on_loop = on_loop
        self._pool: Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: Streams | None = None
        self._base = {
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            # A body handed to the app is complete: read to its end, whatever the length says.
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": "flaskserve (Granian RSGI)",
        }

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the worker, once its event loop exists (Granian calls this)."""
        self._loop = loop
        self._pool = Pool(self.threads)
        self._streams = Streams(loop)
        if self._on_loop is not None:
            self._on_loop(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pool is not None:
            self._pool.stop()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        started = time.monotonic()
        environ = self._environ(scope)
        length_text = environ.get("CONTENT_LENGTH")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        body = b""
        if chunked or (length_text and length_text != "0"):
            length = _length(length_text) if not chunked else None
            if length is not None and length > self.max_body_bytes:
                pass  # not read: the app refuses it from its Content-Length
            elif self._admits_body is not None and not self._admits_body(environ):
                pass  # not read: the app refuses it before reading a body
            else:
                read = await self._read_body(proto, length, started, environ)
                if read is None:
                    return
                body = read
        environ["wsgi.input"] = io.BytesIO(body)
        await self._run(environ, proto)

    #: RSGI allows a plain callable too.
    __call__ = __rsgi__

    def _environ(self, scope: Any) -> dict[str, Any]:
        environ = self._base.copy()
        path = scope.path
        environ["REQUEST_METHOD"] = scope.method
        environ["PATH_INFO"] = path if path.isascii() else path.encode().decode("latin-1")
        environ["QUERY_STRING"] = scope.query_string
        environ["SERVER_PROTOCOL"] = "HTTP/" + scope.http_version
        environ["wsgi.url_scheme"] = scope.scheme
        server_host, _, server_port = scope.server.rpartition(":")
        environ["SERVER_NAME"] = server_host.strip("[]")
        environ["SERVER_PORT"] = server_port
        client_host, _, client_port = scope.client.rpartition(":")
        environ["REMOTE_ADDR"] = client_host.strip("[]")
        environ["REMOTE_PORT"] = client_port
        for name, value in scope.headers.items():
            key = _CGI_HEADERS.get(name)
            if key is None:
                key = "HTTP_" + name.upper().replace("-", "_")
            if key in environ:  # a repeated header: one comma-separated value, as in CGI
                environ[key] += "," + value
            else:
                environ[key] = value
        return environ

    async def _read_body(
        self, proto: Any, length: int | None, started: float, environ: dict[str, Any]
    ) -> bytes | None:
        """The body (at most `max_body_bytes` + 1 bytes of a chunked one), or None when the
        request was answered here (deadline passed, or the body ended early)."""
        parts: list[bytes] = []
        size = 0
        want = length if length is not None else self.max_body_bytes + 1
        try:
            async with asyncio.timeout_at(started + self.body_timeout_s):
                async for chunk in proto:
                    if not chunk:  # the end (or a connection that broke)
                        break
                    parts.append(chunk)
                    size += len(chunk)
                    if size >= want:
                        break
        except TimeoutError:
            self._refuse(proto, environ, 408, size, length, "its body did not arrive within")
            return None
        if length is not None and size < length:
            self._refuse(proto, environ, 400, size, length, "its body ended early, within")
            return None
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return body[: self.max_body_bytes + 1] if length is None else body

    def _refuse(
        self,
        proto: Any,
        environ: dict[str, Any],
        status: int,
        size: int,
        length: int | None,
        what: str,
    ) -> None:
        """Answer `status` (and close the connection) for a body that did not all arrive."""
        arrived = f"{size} of {length}" if length is not None else f"{size} (chunked)"
        log.warning(
            "%s %s from %s:%s: %s %d ms: %s body bytes arrived; answered %d and closed the "
            "connection",
            escape(environ["REQUEST_METHOD"]),
            escape(environ["PATH_INFO"]),
            environ["REMOTE_ADDR"],
            environ["REMOTE_PORT"],
            what.replace("its body", "the request body"),
            round(self.body_timeout_s * 1000),
            arrived,
            status,
        )
        message = (
            f"the request body did not arrive within {self.body_timeout_s:g} s ({arrived} "
            "bytes arrived); send the whole body at once, or raise --body-timeout-ms"
            if status == 408
            else f"the request body ended after {arrived} bytes; send all of it"
        )
        proto.response_bytes(
            status,
            [("content-type", "application/json"), ("connection", "close")],
            orjson.dumps({"error": message}),
        )

    async def _run(self, environ: dict[str, Any], proto: Any) -> None:
        """Run the app in the pool; stream its answer here when the thread did not send it."""
        loop = self._loop or asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        environ[STATE_KEY] = RequestState(time.monotonic())
        app = self.app
        # One context for the request's whole life: a streamed body's chunks are made after the
        # app returned, outside this first `context.run` or on the loop (`streams`), and Flask's
        # `stream_with_context` pushes its request context in one and pops it in another (a
        # context variable must be reset in the context it was set in).
        context = contextvars.copy_context()

        def job() -> None:
            try:
                result = context.run(_call, app, environ, proto)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, done, None, exc)
                return
            if result is None:  # answered
                loop.call_soon_threadsafe(_settle, done, None, None)
                return
            assert self._streams is not None
            where = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"
            stream = self._streams.stream(context, where, *result)
            loop.call_soon_threadsafe(_settle, done, stream, None)
            stream.make()  # this thread goes on with the stream's chunks

        assert self._pool is not None, "__rsgi_init__ was not called"
        self._pool.submit(job)
        stream = await done
        if stream is not None:
            await stream.send(proto)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the request was cancelled meanwhile
        if isinstance(result, Stream):
            result.abandon()
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _length(text: str | None) -> int | None:
    """A Content-Length as a number, None without one (or a malformed one, which the engine
    refuses before the app sees it)."""
    return int(text) if text and text.isdigit() else None


class _Start:
    __slots__ = ("headers", "length", "status")

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        self.headers = headers
        for name, value in headers:
            if len(name) == 14 and name.lower() == "content-length":
                self.length = int(value)
        return _no_write


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the WSGI write() callable is not supported; return the body")


def _call(
    app: WsgiApp, environ: dict[str, Any], proto: Any
) -> tuple[int, list[tuple[str, str]], Iterable[bytes]] | None:
    """In a pool thread: run the app; send its answer when it is not streamed (None), else
    return what to stream."""
    start = _Start()
    try:
        body = app(environ, start)
    except Exception:
        log.exception("unhandled error on %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
        proto.response_bytes(
            500,
            [("content-type", "application/json")],
            b'{"error": "internal server error; the server log has details"}',
        )
        return None
    length = start.length
    if isinstance(body, list) or (length is not None and length <= BUFFERED_RESPONSE_BYTES):
        try:
            data = b"".join(body)
        except Exception:
            close_body(body)
            raise
        proto.response_bytes(start.status, start.headers, data)
        close_body(body)
        return None
    return start.status, start.headers, body
