"""The request body bytes a request actually delivered, which is what metering bills.

`Content-Length` is what a client *claims*; a client can claim 2**64 - 1 bytes and send none
(the request is refused unread with 413), and a chunked body has no length at all. So the WSGI
input is wrapped before Flask sees it, and the wrapper counts what the application read through
it: the bytes a route parsed, or none for a request refused before its body was read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flaskserve.protocol.http_context import RequestState, state_of

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class CountingInput:
    """A read-only file-like object over `wsgi.input` that adds up the bytes it returned."""

    __slots__ = ("_stream", "count")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream.read(-1 if size is None else size)
        self.count += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream.readline(-1 if size is None else size)
        self.count += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(hint)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def count_input(app: WsgiApp) -> WsgiApp:
    """`app` with its WSGI input counted (see `received`)."""

    def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        counter = state_of(environ).input = CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = counter
        return app(environ, start_response)

    return counted


def received(state: RequestState) -> int:
    """Body bytes the application read from the request of `state` so far (0 when not
    counted)."""
    counter = state.input
    return counter.count if counter is not None else 0
