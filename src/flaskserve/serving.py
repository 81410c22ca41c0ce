"""Running the app: Granian for production, Flask's reloading dev server with `--debug`.

Granian (a Rust HTTP server; RSGI interface, `engine`) forks its workers before the app is
built, so each worker loads its own model instances (no runtime thread pool crosses a fork):
`serve_granian` hands it a target loader, run in each worker after the fork, that builds the
app, starts the worker's gRPC server (gRPC's threads do not survive a fork) and its exit watcher
(`service.worker`). Anything that must happen once, such as building the default models,
happens in the master before Granian starts. Only Granian's public `Server` options are used.

Connections: Granian reads headers in Rust and closes a connection whose headers are not all
there within `--header-timeout-ms`, without holding a Python thread. The body is read on the
worker's event loop within `--body-timeout-ms` (`engine`), also without a thread; only then
does the request wait for one of the pool's `--threads` + `engine.SPARE_THREADS` threads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.serving import WSGIRequestHandler

from flaskserve.engine import WsgiOverRsgi
from flaskserve.observability import metrics
from flaskserve.observability.logs import access_json, escape, escape_quoted
from flaskserve.service import hooks, reload, worker
from flaskserve.service.gate import gate_of
from flaskserve.settings import Settings

if TYPE_CHECKING:
    from flaskserve.protocol.grpc.server import GrpcServer

log = logging.getLogger("flaskserve")
#: Requests a worker's engine takes on at once (most of them may be waiting for their body, on
#: the event loop, each costing a coroutine); more wait in the listen backlog. Granian's default
#: (1024 divided among the workers) let a few hundred stalled bodies fill a worker.
CONNECTIONS_PER_WORKER = 8192
TEXT_LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def granian_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `granian.Granian` that serve `settings`."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    return {
        "address": settings.host,
        "port": settings.port,
        "interface": Interfaces.RSGI,
        # uvloop where it is installed (a dependency), else asyncio's (docs/benchmarks.md).
        "loop": Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.asyncio,
        "http": HTTPModes.http1,
        "websockets": False,
        "workers": settings.worker_count,
        "backpressure": CONNECTIONS_PER_WORKER,
        "http1_settings": HTTP1Settings(header_read_timeout=settings.header_timeout_ms),
        # A killed or crashed worker is replaced (SIGHUP reloads workers in place instead:
        # `service.reload`).
        "respawn_failed_workers": True,
        # After SIGTERM, in-flight requests get this long.
        "workers_kill_timeout": settings.graceful_timeout,
        "log_level": LogLevels(settings.log_level.lower()),
        "log_dictconfig": _log_config(settings.log_format),
    }


def _log_config(log_format: str) -> dict[str, Any]:
    """Granian's own log lines in the server's format (its access log stays off: the app writes
    one access line per request, `AccessLog`)."""
    if log_format == "json":
        formatter: dict[str, Any] = {"()": "flaskserve.observability.logs.JsonFormatter"}
    else:
        formatter = {"()": "flaskserve.observability.logs.TextFormatter", "fmt": TEXT_LOG_FORMAT}
    return {
        "formatters": {"generic": formatter, "access": {"()": "logging.Formatter"}},
        "filters": {"intended": {"()": "flaskserve.serving.IntendedThreads"}},
        "handlers": {
            "console": {
                "formatter": "generic",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "filters": ["intended"],
            },
        },
        "loggers": {"_granian": {"handlers": ["console"], "propagate": False}},
    }


class IntendedThreads(logging.Filter):
    """Drops Granian's lines that are noise to our users: the warning that its threads
    outnumber the cores (the app's threads are ours, `engine.Pool`, sized by `--threads`), and
    that websockets are not supported (flaskserve serves no websocket)."""

    NOISE = ("Configuration allows spawning up to", "Websockets are not supported")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


def raise_open_files_limit() -> None:
    """Let the server hold as many connections as the system allows it: the soft limit on open
    files (often 1024, which a thousand idle sockets reach) raised to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_granian(app_factory: Callable[[], Flask], settings: Settings) -> None:
    """Serve the app `app_factory` builds, in `settings.worker_count` Granian workers."""
    from granian import Granian

    raise_open_files_limit()
    # Before the fork: the workers' metrics must all land in one shared folder.
    cleanup = metrics.prepare_multiprocess_dir()
    try:
        server = Granian("flaskserve", **granian_options(settings))
        # Run after Granian set its own signal handlers: SIGHUP reloads each worker in place.
        server.on_startup(reload.forward_to_workers)
        server.serve(target_loader=_worker_loader(app_factory, settings), wrap_loader=False)
    finally:
        cleanup()


def _worker_loader(
    app_factory: Callable[[], Flask], settings: Settings
) -> Callable[[], WsgiOverRsgi]:
    def load() -> WsgiOverRsgi:
        """In a new worker, after the fork: what it serves, and what runs on SIGHUP and when it
        stops."""
        signals = worker.listen()
        metrics.sweep_dead_workers()  # a worker this one replaces may have been killed
        app = app_factory()
        live = reload.LiveApp(reload.Generation(app, start_grpc(app, settings)))
        reloader = reload.Reloader(
            live, app_factory, lambda new: start_grpc(new, settings), settings.graceful_timeout
        )
        worker.watch(signals, reloader, settings.graceful_timeout)
        return WsgiOverRsgi(
            AccessLog(live, access_logger(), settings.log_format == "json", fast=True),
            settings.threads,
            settings.max_request_bytes,
            settings.body_timeout_ms / 1000,
            on_loop=worker.engine_listening,
            admits_body=lambda environ: hooks.admits_body(live.current.app, environ),
        )

    return load


def start_grpc(app: Flask, settings: Settings) -> GrpcServer | None:
    """The gRPC front door of `app` on `--grpc-port`, sharing its data plane, keys, limits and
    meter; None when the port is 0 or the app is not a flaskserve app."""
    if not settings.grpc_port:
        return None
    dataplane = app.extensions.get("flaskserve")
    control = app.extensions.get("flaskserve.control")
    gate = gate_of(app)
    if dataplane is None or control is None or gate is None:
        log.warning("--grpc-port ignored: the app serves no flaskserve model repository")
        return None
    from flaskserve.protocol.grpc import server
    from flaskserve.service.grpc_guard import GrpcGuard

    guard = GrpcGuard(gate)
    return server.start(
        dataplane,
        control,
        settings.host,
        settings.grpc_port,
        settings.threads,
        settings.max_request_bytes,
        app.extensions["flaskserve.statistics"],
        guard,
    )


class _QuietHandler(WSGIRequestHandler):
    """Leaves the access line to `AccessLog`, which knows the request's duration."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class AccessLog:
    """WSGI middleware writing one line per request: client, request line, status, bytes (the
    Content-Length sent, or -) and duration.

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
        line = (
            f'{escape(get("REMOTE_ADDR", "-"))} "{escape_quoted(get("REQUEST_METHOD", "-"))} '
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


def serve_debug(app: Flask, settings: Settings) -> None:
    """Flask's development server with the reloader: `app.run(debug=True)`, plus access lines."""
    logger = access_logger(sys.stderr)
    json = settings.log_format == "json"
    app.wsgi_app = AccessLog(app.wsgi_app, logger, json)  # type: ignore[method-assign]
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":  # the reloader's child, which serves
        start_grpc(app, settings)
    app.run(
        host=settings.host,
        port=settings.port,
        debug=True,
        use_reloader=True,
        request_handler=_QuietHandler,
    )
