"""The engine adapter (`flaskserve.serving.engine`) on a fake RSGI protocol, without a server:
what the WSGI app is handed, the body deadline, the size limit, and streamed responses."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from flaskserve.app import create_app
from flaskserve.core import wakeup
from flaskserve.serving.engine import WsgiOverRsgi
from flaskserve.settings import Settings


class FakeProto:
    """The body as chunks (then its end, or a stall), and what was answered."""

    def __init__(self, chunks: list[bytes], stall: bool = False) -> None:
        self.chunks = list(chunks)
        self.stall = stall
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.streamed: list[bytes] = []
        #: The client goes away after this many streamed chunks (None: it stays).
        self.gone_after: int | None = None
        #: Reads of the body so far.
        self.reads = 0

    def __aiter__(self) -> FakeProto:
        return self

    async def __anext__(self) -> bytes:
        self.reads += 1
        if self.chunks:
            return self.chunks.pop(0)
        if self.stall:
            await asyncio.sleep(3600)
        return b""

    def response_bytes(self, status: int, headers: list, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def response_stream(self, status: int, headers: list) -> Any:
        self.status, self.headers = status, headers
        proto = self

        class Transport:
            async def send_bytes(self, data: bytes) -> None:
                if proto.gone_after is not None and len(proto.streamed) >= proto.gone_after:
                    raise ConnectionResetError("the client went away")
                proto.streamed.append(data)

        return Transport()


def scope(method: str = "POST", headers: dict[str, str] | None = None) -> Any:
    return SimpleNamespace(
        method=method, path="/echo", query_string="a=1", http_version="1.1", scheme="http",
        server="127.0.0.1:5000", client="127.0.0.1:40000",
        headers=SimpleNamespace(items=lambda: list((headers or {}).items())),
    )


def serve(app: Any, proto: FakeProto, request: Any, limit: int = 100,
          timeout_s: float = 5.0) -> None:
    adapter = WsgiOverRsgi(app, threads=2, max_body_bytes=limit, body_timeout_s=timeout_s)

    async def run() -> None:
        adapter.__rsgi_init__(asyncio.get_running_loop())
        try:
            await adapter.__rsgi__(request, proto)
        finally:
            adapter.__rsgi_del__(asyncio.get_running_loop())

    asyncio.run(run())


def echo(environ: dict, start_response: Any) -> list[bytes]:
    """Answers what it was handed: the body it read and some of the environ."""
    body = environ["wsgi.input"].read()
    seen = {key: environ.get(key) for key in
            ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_LENGTH", "REMOTE_ADDR",
             "HTTP_X_TWICE", "SERVER_PROTOCOL")}
    payload = orjson.dumps({"body": body.decode(), **seen})
    start_response("200 OK", [("Content-Length", str(len(payload)))])
    return [payload]


def test_the_app_gets_the_whole_body_and_a_wsgi_environ() -> None:
    proto = FakeProto([b"hel", b"lo"])
    headers = {"content-length": "5", "x-twice": "a", "content-type": "text/plain"}
    request = scope(headers=headers)
    request.headers = SimpleNamespace(items=lambda: [*headers.items(), ("x-twice", "b")])
    serve(echo, proto, request)
    assert proto.status == 200
    assert orjson.loads(proto.body) == {
        "body": "hello", "REQUEST_METHOD": "POST", "PATH_INFO": "/echo", "QUERY_STRING": "a=1",
        "CONTENT_LENGTH": "5", "REMOTE_ADDR": "127.0.0.1", "HTTP_X_TWICE": "a,b",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }


def test_a_body_that_stalls_gets_408_and_never_reaches_the_app() -> None:
    called = []
    proto = FakeProto([b"12345"], stall=True)
    serve(lambda *args: called.append(args), proto, scope(headers={"content-length": "1000"}),
          limit=10_000, timeout_s=0.2)
    assert proto.status == 408 and ("connection", "close") in proto.headers
    assert "5 of 1000 bytes arrived" in orjson.loads(proto.body)["error"]
    assert not called


def test_a_declared_length_over_the_limit_is_not_read() -> None:
    proto = FakeProto([b"x" * 50] * 10)
    serve(echo, proto, scope(headers={"content-length": "500"}), limit=100)
    assert orjson.loads(proto.body)["body"] == ""  # the app refuses it from CONTENT_LENGTH
    assert len(proto.chunks) == 10


def test_a_chunked_body_is_read_to_one_byte_past_the_limit() -> None:
    proto = FakeProto([b"x" * 60] * 10)
    serve(echo, proto, scope(headers={"transfer-encoding": "chunked"}), limit=100)
    assert len(orjson.loads(proto.body)["body"]) == 101


def test_a_response_without_a_length_is_streamed_chunk_by_chunk_and_closed() -> None:
    closed = []

    def stream(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events() -> Any:
            try:
                yield b"data: 1\n\n"
                yield b""
                yield b"data: 2\n\n"
            finally:
                closed.append(True)

        return events()

    proto = FakeProto([])
    serve(stream, proto, scope("GET"))
    assert proto.status == 200
    assert proto.streamed == [b"data: 1\n\n", b"data: 2\n\n"]
    assert closed == [True]


def test_an_app_that_raises_gets_a_json_500() -> None:
    def broken(environ: dict, start_response: Any) -> Any:
        raise RuntimeError("boom")

    proto = FakeProto([])
    serve(broken, proto, scope("GET"))
    assert proto.status == 500 and b"internal server error" in proto.body


def streaming_app(fail: bool, closed: list[bool]) -> Any:
    """Streams two events, then raises when `fail`, else a third; notes its `close()`."""

    def app(environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events() -> Any:
            try:
                yield b"data: 1\n\n"
                yield b"data: 2\n\n"
                if fail:
                    raise RuntimeError("the model broke mid-stream")
                yield b"data: 3\n\n"
            finally:
                closed.append(True)

        return events()

    return app


def test_an_app_failing_mid_stream_is_logged_as_an_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[bool] = []
    proto = FakeProto([])
    with caplog.at_level(logging.DEBUG, logger="flaskserve"):
        serve(streaming_app(True, closed), proto, scope("GET"))
    assert proto.streamed == [b"data: 1\n\n", b"data: 2\n\n"]
    assert closed == [True]
    [error] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert "GET /echo" in error.getMessage()
    assert error.exc_info is not None and "mid-stream" in str(error.exc_info[1])


def test_a_client_leaving_mid_stream_closes_the_app_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[bool] = []
    proto = FakeProto([])
    proto.gone_after = 1
    with caplog.at_level(logging.DEBUG, logger="flaskserve"):
        serve(streaming_app(False, closed), proto, scope("GET"))
    assert proto.streamed == [b"data: 1\n\n"]
    assert closed == [True]
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


class Producer:
    """Tokens made on another thread, read by streams that wait on the engine's waker when
    there is none yet (as a batched generation does, `core.wakeup`), or block without one."""

    def __init__(self) -> None:
        self.made: list[bytes] = []
        self.fire: list[Any] = []
        self.more = threading.Condition()
        self.reader_threads: set[str] = set()

    def make(self, token: bytes) -> None:
        with self.more:
            self.made.append(token)
            self.more.notify_all()
            fire, self.fire = self.fire, []
        for wake in fire:
            wake()

    def app(self, environ: dict, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events() -> Any:
            sent = 0
            yield b"start"
            while sent < 2:
                with self.more:
                    waker = wakeup.current()
                    if len(self.made) == sent:
                        if waker is not None:
                            self.fire.append(waker.arm())
                        else:
                            made = self.more.wait_for(lambda n=sent: len(self.made) > n, 10)
                            assert made, "no token came"
                if len(self.made) == sent:
                    yield b""
                    continue
                self.reader_threads.add(threading.current_thread().name)
                yield self.made[sent]
                sent += 1

        return events()


def test_streams_waiting_on_their_waker_hold_no_pool_thread() -> None:
    producer = Producer()
    adapter = WsgiOverRsgi(producer.app, threads=1, max_body_bytes=100, body_timeout_s=5)
    streams = adapter.threads * 3  # more than the pool has threads

    async def run() -> list[FakeProto]:
        loop = asyncio.get_running_loop()
        adapter.__rsgi_init__(loop)
        protos = [FakeProto([]) for _ in range(streams)]
        try:
            served = [asyncio.ensure_future(adapter.__rsgi__(scope("GET"), p)) for p in protos]
            async with asyncio.timeout(20):  # every stream waits: none waits for a thread
                while len(producer.fire) < streams:
                    await asyncio.sleep(0.01)
                for token in (b"one", b"two"):
                    await loop.run_in_executor(None, producer.make, token)
                await asyncio.gather(*served)
        finally:
            adapter.__rsgi_del__(loop)
        return protos

    protos = asyncio.run(run())
    assert all(p.streamed == [b"start", b"one", b"two"] for p in protos)
    assert producer.reader_threads == {threading.main_thread().name}  # read on the loop


def test_a_client_leaving_a_stream_the_loop_drives_closes_it() -> None:
    producer = Producer()
    closed: list[bool] = []

    def app(environ: dict, start_response: Any) -> Any:
        body = producer.app(environ, start_response)

        def events() -> Any:
            try:
                yield from body
            finally:
                closed.append(True)

        return events()

    proto = FakeProto([])
    proto.gone_after = 1
    adapter = WsgiOverRsgi(app, threads=1, max_body_bytes=100, body_timeout_s=5)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        adapter.__rsgi_init__(loop)
        try:
            served = asyncio.ensure_future(adapter.__rsgi__(scope("GET"), proto))
            async with asyncio.timeout(20):
                while not producer.fire:  # the stream waits on the loop
                    await asyncio.sleep(0.01)
                await loop.run_in_executor(None, producer.make, b"one")
                await served
        finally:
            adapter.__rsgi_del__(loop)

    asyncio.run(run())
    assert proto.streamed == [b"start"]
    assert closed == [True]


def test_a_request_that_waited_for_a_busy_pool_counts_the_wait_against_its_deadline(
    digits_repo,
) -> None:
    """An inference that waited for a thread longer than `--request-timeout-ms` gets 504: its
    time counts from when the engine queued it, not from when a thread took it up."""
    timeout_s = 0.1
    app = create_app(Settings(repository=str(digits_repo), request_timeout_ms=100))
    release = threading.Event()
    busy: list[bool] = []

    def busy_or_app(environ: dict, start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] == "POST":
            return app(environ, start_response)
        busy.append(True)
        release.wait(30)
        start_response("204 No Content", [("Content-Length", "0")])
        return []

    adapter = WsgiOverRsgi(busy_or_app, threads=1, max_body_bytes=1 << 20, body_timeout_s=5)
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
    )
    request = scope(headers={"content-length": str(len(body)),
                             "content-type": "application/json"})
    request.path = "/v2/models/digits/infer"
    proto = FakeProto([body])

    async def until(condition: Any) -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def run() -> None:
        adapter.__rsgi_init__(asyncio.get_running_loop())
        try:
            held = [asyncio.create_task(adapter.__rsgi__(scope("GET"), FakeProto([])))
                    for _ in range(adapter.threads)]
            await until(lambda: len(busy) == adapter.threads)  # every thread is taken
            inference = asyncio.create_task(adapter.__rsgi__(request, proto))
            # Its body read, the request is queued before the task yields (nothing awaits in
            # between): from now on its time runs.
            await until(lambda: proto.reads > 0)
            queued_by = time.monotonic()
            await until(lambda: time.monotonic() > queued_by + timeout_s)
            release.set()
            await asyncio.gather(inference, *held)
        finally:
            release.set()
            adapter.__rsgi_del__(asyncio.get_running_loop())

    asyncio.run(run())
    assert len(busy) == adapter.threads
    assert proto.status == 504, proto.body
    assert "waiting for a worker thread" in orjson.loads(proto.body)["error"]


def test_a_stream_whose_request_was_cancelled_is_closed_by_its_maker() -> None:
    from flaskserve.serving.engine import _settle
    from flaskserve.serving.streams import Streams

    closed: list[bool] = []

    def endless() -> Any:
        try:
            while True:
                yield b"data: tick\n\n"
        finally:
            closed.append(True)

    loop = asyncio.new_event_loop()
    try:
        stream = Streams(loop).stream(
            contextvars.copy_context(), "GET /echo", 200, [], endless()
        )
        cancelled: asyncio.Future[Any] = loop.create_future()
        cancelled.cancel()
        _settle(cancelled, stream, None)  # the request went away before its stream was sent
        maker = threading.Thread(target=stream.make, daemon=True)  # the app's pool thread
        maker.start()
        maker.join(20)
        assert not maker.is_alive(), "the maker went on for a stream no one sends"
    finally:
        loop.close()
    assert closed == [True]


def test_a_wake_up_after_the_loop_closed_is_dropped() -> None:
    from flaskserve.serving.streams import _Wakes

    loop = asyncio.new_event_loop()
    wakes = _Wakes(loop)
    loop.close()
    wakes.fire(asyncio.Event())  # from the batch thread, while the worker stops: no error
