"""How much one stream may send and for how long: `--max-stream-bytes` and
`--max-stream-seconds`, kept by the gate and applied by every transport that streams.

Granian's stream transport queues what it is handed without a bound, so a worker cannot tell a
client that stopped reading from one that reads: a streaming model that yields without end to a
client that reads nothing would grow the worker's memory, and hold its admission slot and a
thread, until the client disconnects. A stream that reaches either limit is stopped (its
generation closed, which frees its slot) and ends with an error in its front door's own shape
that says which limit it reached and what to do; the memory non-reading clients can hold in a
worker is then at most its admission slots (`--threads`) x `--max-stream-bytes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flaskserve.core.errors import FlaskServeError

#: What each limit is called where the operator sets it.
BYTES_FLAG = "--max-stream-bytes"
SECONDS_FLAG = "--max-stream-seconds"


class StreamLimitReached(FlaskServeError):
    """A stream reached one of its limits; the message says which and what to do. 413 for the
    bytes (the client asked for more than one stream may carry), 504 for the time (as a request
    past its deadline); a gRPC stream tells it as a response's `error_message`."""

    def __init__(self, message: str, status: int, flag: str) -> None:
        super().__init__(message)
        self.status_code = status
        #: The flag of the limit reached (`BYTES_FLAG` or `SECONDS_FLAG`).
        self.flag = flag
        #: The limit's name as an error code (OpenAI's `code`): `max_stream_bytes` or
        #: `max_stream_seconds`.
        self.code = flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The limits of one stream; 0 turns either off."""

    #: The most bytes one stream may send (an HTTP response's body; a gRPC generation's text).
    max_bytes: int = 0
    #: The longest one stream may run, in seconds, from when it began (an HTTP response: when
    #: its view returned it; a gRPC generation: when it was started).
    max_seconds: float = 0.0

    @property
    def any(self) -> bool:
        """Whether any limit is on."""
        return self.max_bytes > 0 or self.max_seconds > 0

    @property
    def byte_cap(self) -> float:
        """`max_bytes`, or infinity when off: compared with a count, no test for 0 needed."""
        return self.max_bytes if self.max_bytes > 0 else math.inf

    def deadline(self, started: float) -> float:
        """The `time.monotonic()` value past which a stream that started at `started` must
        stop; infinity when time is not limited."""
        return started + self.max_seconds if self.max_seconds > 0 else math.inf

    def reached(self, sent: int, seconds: float, over_bytes: bool) -> StreamLimitReached:
        """The error of a stream that sent `sent` bytes in `seconds` and then reached the bytes
        limit (`over_bytes`) or the time limit."""
        if over_bytes:
            return StreamLimitReached(
                f"the stream was stopped after {sent} bytes: one stream may send at most "
                f"{self.max_bytes} bytes on this server ({BYTES_FLAG}); ask for less (a lower "
                f"max_tokens), or ask the operator to raise {BYTES_FLAG}",
                413,
                BYTES_FLAG,
            )
        return StreamLimitReached(
            f"the stream was stopped after {seconds:.1f}s: one stream may run at most "
            f"{self.max_seconds:g}s on this server ({SECONDS_FLAG}); ask for less (a lower "
            f"max_tokens) or read the stream as it comes, or ask the operator to raise "
            f"{SECONDS_FLAG}",
            504,
            SECONDS_FLAG,
        )


#: No limit on a stream (a gate built without settings, the gRPC door without a gate).
NO_LIMITS = StreamLimits()
