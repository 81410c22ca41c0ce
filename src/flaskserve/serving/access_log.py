"""One access line per request, written by the app (Granian's own access log stays off), with
the API key that made it, the request's duration and the bytes it sent."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from flaskserve.observability.logs import access_json, escape, escape_quoted
from flaskserve.protocol.http_context import STATE_KEY


class AccessLog:
    """WSGI middleware writing one line per request: client, API key id (the valid key the
    request presented, refused or not, as the gate left it in the request's state; - without
    one), request line, status, bytes (the Content-Length sent, or -) and duration. The key's id
    sits where the Common Log Format puts the user, and never its secret.

    With `fast`, a text line is made with one f-string and written to stdout with one `os.write`
    (atomic for a line, no lock, no `logging`): about 3 us instead of the 20-55 us a logging
    record costs, as much as serving a Flask hello route (docs/benchmarks.md).
    """

    def __init__(
        self, app: Any, logger: logging.Logger, json: bool = False, fast: bool = False
    ) -> None:
        self.app = app
        self.logger = logger
        self.json = json
        self.fast = fast and not json

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        status: list[Any] = ["-", "-"]

        def recording_start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = code.split(" ", 1)[0]
            for name, value in headers:
                if name.lower() == "content-length":
                    status[1] = value
            return start_response(code, headers, exc_info)

        try:
            return self.app(environ, recording_start_response)  # type: ignore[no-any-return]
        finally:
            if self.json:
                elapsed_s = time.perf_counter() - started
                self.logger.info("%s", access_json(environ, status[0], elapsed_s))
            else:
                self._text_line(environ, status[0], status[1], started)

    def _text_line(self, environ: dict[str, Any], status: str, size: str, started: float) -> None:
        get = environ.get
        query = get("QUERY_STRING")
        path = escape_quoted(get("PATH_INFO", "") + (f"?{query}" if query else ""))
        elapsed = (time.perf_counter() - started) * 1000
        state = get(STATE_KEY)
        # A key id is printable ASCII without spaces or quotes (`gate.keys.KEY_ID`): as it is.
        key = (state.key_id if state is not None else None) or "-"
        line = (
            f'{escape(get("REMOTE_ADDR", "-"))} {key} "{escape_quoted(get("REQUEST_METHOD", "-"))} '
            f'{path} {escape_quoted(get("SERVER_PROTOCOL", "-"))}" {status} {size} '
            f"{elapsed:.1f}ms"
        )
        if not self.fast:
            self.logger.info("%s", line)
            return
        with contextlib.suppress(OSError):  # stdout closed: serving goes on without the line
            os.write(1, (line + "\n").encode())


def access_logger(stream: Any = None) -> logging.Logger:
    """The `flaskserve.access` logger: the bare line (text or JSON), to `stream` [stdout]."""
    logger = logging.getLogger("flaskserve.access")
    if not logger.handlers:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
