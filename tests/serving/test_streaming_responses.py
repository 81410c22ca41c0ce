"""A streamed response (a Flask response whose body is a generator, as server-sent events are)
passes through the engine adapter chunk by chunk, and a client that goes away closes the
app's iterator (WSGI `close()`). The chunks of one response share the request's context
(Flask's `stream_with_context`), though the engine's threads take turns making them."""

from __future__ import annotations

import socket

from waiting import eventually

STREAMING_APP = """\
import time
from pathlib import Path

from flask import Response, request, stream_with_context

from flaskserve import ModelServer

server = ModelServer()
marks = Path(__file__).with_name("marks")
marks.mkdir(exist_ok=True)


@server.app.get("/events/<name>")
def events(name):
    def generate():
        try:
            yield "data: first\\n\\n"
            (marks / f"{name}.first").touch()
            # The last chunk waits for the test to have seen the first one.
            while not (marks / f"{name}.go").exists():
                time.sleep(0.01)
                yield ": waiting\\n\\n"
            (marks / f"{name}.last").touch()
            # The request context, pushed by stream_with_context in the first chunk, is still
            # there in the last one, whichever engine thread makes it.
            yield f"data: last {request.path}\\n\\n"
        finally:
            (marks / f"{name}.closed").touch()

    return Response(stream_with_context(generate()), mimetype="text/event-stream")
"""


def _read_until(client: socket.socket, text: bytes) -> bytes:
    data = b""
    while text not in data:
        chunk = client.recv(65536)
        assert chunk, f"the connection closed before {text!r}: {data!r}"
        data += chunk
    return data


def test_a_streamed_response_reaches_the_client_chunk_by_chunk_and_is_closed(
    start_server, tmp_path
) -> None:
    (tmp_path / "streaming_app.py").write_text(STREAMING_APP)
    server = start_server(["--app", "streaming_app:server", "--workers", "1"], cwd=tmp_path)
    marks = tmp_path / "marks"
    request = b"GET /events/one HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(request)
        first = _read_until(client, b"data: first")
        assert b"200 OK" in first and b"text/event-stream" in first
        assert not (marks / "one.last").exists(), "the first chunk came before the last one"
        (marks / "one.go").touch()
        _read_until(client, b"data: last /events/one")
    eventually(lambda: (marks / "one.closed").exists(), message="the iterator is closed")


def test_a_client_that_leaves_mid_stream_closes_the_apps_iterator(start_server, tmp_path) -> None:
    (tmp_path / "streaming_app.py").write_text(STREAMING_APP)
    server = start_server(["--app", "streaming_app:server", "--workers", "1"], cwd=tmp_path)
    marks = tmp_path / "marks"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"GET /events/gone HTTP/1.1\r\nHost: localhost\r\n\r\n")
        _read_until(client, b"data: first")
    eventually(lambda: (marks / "gone.closed").exists(), message="the iterator is closed")
    assert not (marks / "gone.last").exists()
