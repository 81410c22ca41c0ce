"""The wrapper of a streamed response (`gate.streams`), driven directly: every piece passes
unchanged and at once, empty ones included; the piece past a limit is not sent, the body is
closed, and an event stream ends with one error event."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from flask import Flask, Response

from flaskserve.core.stream_limits import StreamLimits
from flaskserve.gate.streams import Sent, bound_stream, sent_counter


class Body:
    """A streamed body that notes what was taken from it and whether it was closed."""

    def __init__(self, pieces: list[bytes | str]) -> None:
        self.pieces = pieces
        self.taken = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes | str]:
        for piece in self.pieces:
            self.taken += 1
            yield piece

    def close(self) -> None:
        self.closed = True


def _wrapped(body: Body, limits: StreamLimits, mimetype: str = "text/event-stream") -> Sent:
    app = Flask(__name__)
    with app.test_request_context("/stream", method="POST"):
        response = Response(body, mimetype=mimetype)
        bound_stream(response, limits)
        assert isinstance(response.response, Sent)
        return response.response


def test_every_piece_passes_unchanged_and_counted_empty_ones_included() -> None:
    body = Body([b"a", b"", "b\u00e9", b"", b"cd"])
    sent = _wrapped(body, StreamLimits(max_bytes=100, max_seconds=60))
    passed = []
    for piece in sent:
        passed.append(piece)
        assert body.taken == len(passed)  # handed on as soon as it was taken: nothing buffered
    assert passed == [b"a", b"", "b\u00e9".encode(), b"", b"cd"]
    assert sent.bytes == 6


def test_the_piece_past_the_cap_is_not_sent_and_the_body_is_closed() -> None:
    body = Body([b"x" * 40, b"x" * 40, b"x" * 40, b"never"])
    sent = _wrapped(body, StreamLimits(max_bytes=100))
    passed = list(sent)
    assert passed[:2] == [b"x" * 40, b"x" * 40] and body.closed and body.taken == 3
    assert passed[2].startswith(b"data: ") and passed[2].endswith(b"\n\n")
    error = orjson.loads(passed[2][6:])["error"]
    assert "--max-stream-bytes" in error and "at most 100 bytes" in error
    assert len(passed) == 3


def test_a_stream_past_its_time_stops_at_its_next_piece_even_an_empty_one() -> None:
    body = Body([b"", b"a"])
    sent = _wrapped(body, StreamLimits(max_seconds=600))
    assert sent.bound is not None
    sent.bound.deadline = 0.0  # its time is up before its first piece, an empty one
    (last,) = list(sent)
    assert "--max-stream-seconds" in orjson.loads(last[6:])["error"]
    assert body.closed and body.taken == 1


def test_a_stream_that_is_not_an_event_stream_is_cut_without_an_event() -> None:
    body = Body([b"x" * 60, b"x" * 60])
    assert list(_wrapped(body, StreamLimits(max_bytes=100), "text/plain")) == [b"x" * 60]
    assert body.closed


def test_a_response_with_a_length_and_no_limits_are_left_alone() -> None:
    app = Flask(__name__)
    with app.test_request_context("/file"):
        sized = Response(iter([b"x" * 200]), headers={"Content-Length": "200"})
        bound_stream(sized, StreamLimits(max_bytes=100))
        assert not isinstance(sized.response, Sent)
        counted = sent_counter(sized, StreamLimits(max_bytes=100))  # metering counts it only
        assert list(counted) == [b"x" * 200] and counted.bound is None
        unlimited = Response(iter([b"x"]))
        bound_stream(unlimited, StreamLimits())
        assert not isinstance(unlimited.response, Sent)
