"""Log lines as text (the default) or as one JSON object per line (`--log-format json`).

An access line in JSON carries timestamp, method, path, status, duration_ms, model, request_id,
client and key_id (the API key that made the request, never its secret), so a log pipeline can
join it with metrics, with the client's `X-Request-ID` and with a customer's usage.
Every other log line in JSON mode is an object with timestamp, level, logger and message.

Nothing a client sent reaches a log raw: paths, model names, request ids and every other
client-supplied string go through `escape`, which writes control characters (C0, DEL and C1,
the ones a terminal acts on: ESC starts an escape sequence, BEL rings) as `\\xNN`. The access
line escapes its fields; the formatters (`TextFormatter`, `JsonFormatter`) escape every other
message, so a log call that quotes a request value is safe too.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from flaskserve.protocol.http_context import STATE_KEY, RequestState

#: Control characters (and, for the text access line, `"`, which would end a quoted field).
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS_AND_QUOTE = {**_CONTROLS, ord('"'): "\\x22"}


def escape(text: str) -> str:
    """`text` with its control characters written as `\\xNN`; plain printable ASCII (nearly
    every path and id) is returned as it is after one check in C."""
    if text.isascii() and text.isprintable():
        return text
    return text.translate(_CONTROLS)


def escape_quoted(text: str) -> str:
    """`escape`, and `"` as `\\x22`: for a field of the text access line inside quotes."""
    if text.isascii() and text.isprintable() and '"' not in text:
        return text
    return text.translate(_CONTROLS_AND_QUOTE)


def _escaped(value: Any) -> Any:
    return escape(value) if isinstance(value, str) else value


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def access_record(
    environ: dict[str, Any], status: int | str, duration_seconds: float
) -> dict[str, Any]:
    """The JSON access line of one request, from its WSGI environ."""
    query = environ.get("QUERY_STRING")
    state: RequestState | None = environ.get(STATE_KEY)
    return {
        "timestamp": _timestamp(time.time()),
        "method": _escaped(environ.get("REQUEST_METHOD")),
        "path": escape(environ.get("PATH_INFO", "") + (f"?{query}" if query else "")),
        "status": int(status) if str(status).isdigit() else status,
        "duration_ms": round(duration_seconds * 1000, 3),
        "model": _escaped(state.model if state is not None else None),
        "request_id": _escaped(state.request_id if state is not None else None),
        "client": _escaped(environ.get("REMOTE_ADDR")),
        "key_id": state.key_id if state is not None else None,
    }


def access_json(environ: dict[str, Any], status: int | str, duration_seconds: float) -> str:
    return orjson.dumps(access_record(environ, status, duration_seconds)).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a traceback, if any, travels in `exc_info` as text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": escape(record.getMessage()),
            "process": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = escape_traceback(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def escape_traceback(text: str) -> str:
    """A traceback's text escaped line by line: its line breaks are its own."""
    return "\n".join(escape(line) for line in text.split("\n"))


class TextFormatter(logging.Formatter):
    """`logging.Formatter` whose message (and traceback) has its control characters escaped:
    a message quoting a client's string cannot start a line of its own or a terminal escape."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_traceback(super().formatException(ei))
