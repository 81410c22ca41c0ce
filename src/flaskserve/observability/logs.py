"""Log lines as text (the default) or as one JSON object per line (`--log-format json`).

An access line in JSON carries timestamp, method, path, status, duration_ms, model and
request_id, so a log pipeline can join it with metrics and with the client's `X-Request-ID`.
Every other log line in JSON mode is an object with timestamp, level, logger and message.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from flaskserve.observability.requests import MODEL_KEY, REQUEST_ID_KEY


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def access_record(
    environ: dict[str, Any], status: int | str, duration_seconds: float
) -> dict[str, Any]:
    """The JSON access line of one request, from its WSGI environ."""
    query = environ.get("QUERY_STRING")
    return {
        "timestamp": _timestamp(time.time()),
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO", "") + (f"?{query}" if query else ""),
        "status": int(status) if str(status).isdigit() else status,
        "duration_ms": round(duration_seconds * 1000, 3),
        "model": environ.get(MODEL_KEY),
        "request_id": environ.get(REQUEST_ID_KEY),
        "client": environ.get("REMOTE_ADDR"),
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
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()
