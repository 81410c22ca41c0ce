"""Production serving: Granian workers, each building its own app after the fork.

Granian (a Rust HTTP server; RSGI interface, `engine`) forks its workers before the app is
built, so each worker loads its own model instances (no runtime thread pool crosses a fork):
`serve_granian` hands it a target loader, run in each worker after the fork, that builds the
app, starts the worker's gRPC server (gRPC's threads do not survive a fork) and its exit watcher
(`serving.worker`). Anything that must happen once, such as building the default models,
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
import resource
from collections.abc import Callable
from typing import Any

from flask import Flask

from flaskserve.gate import http_hooks
from flaskserve.observability import metrics
from flaskserve.serving import reload, worker
from flaskserve.serving.access_log import AccessLog, access_logger
from flaskserve.serving.engine import WsgiOverRsgi
from flaskserve.serving.grpc_door import start_grpc
from flaskserve.settings import Settings

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
        # `serving.reload`).
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
        "filters": {"intended": {"()": "flaskserve.serving.granian.IntendedThreads"}},
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
    cleanup = metrics.prepare_shared_dir()
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
            admits_body=lambda environ: http_hooks.admits_body(live.current.gate, environ),
        )

    return load
