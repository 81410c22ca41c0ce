"""Running the app: gunicorn for production, Flask's reloading dev server with `--debug`.

gunicorn forks its workers before the app is built, so each worker loads its own model instances
(no runtime thread pool crosses a fork). Anything that must happen once, such as building the
default models, happens in the master before gunicorn starts.

With `--grpc-port`, each worker also starts a gRPC server once its app is built
(`start_grpc`, after the fork: gRPC's threads do not survive one). On SIGTERM it stops taking
calls at the same moment the worker stops taking HTTP requests, and the worker waits for its
running calls before it exits, as it does for HTTP requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from werkzeug.serving import WSGIRequestHandler

from flaskserve.observability import metrics
from flaskserve.observability.logs import JsonGunicornLogger, access_json
from flaskserve.service.worker import QueueTimedWorker, worker_exit
from flaskserve.settings import Settings

if TYPE_CHECKING:
    from flaskserve.protocol.grpc.server import GrpcServer

log = logging.getLogger("flaskserve")
#: Memory-backed folder for gunicorn's worker heartbeat files, where the OS has one.
SHM = "/dev/shm"
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from `Settings`, building the Flask app in each worker."""

    def __init__(self, app_factory: Callable[[], Flask], settings: Settings) -> None:
        self._app_factory = app_factory
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        settings = self._settings
        options: dict[str, Any] = {
            "bind": f"{settings.host}:{settings.port}",
            "workers": settings.worker_count,
            # gthread, plus the time each request waited for a thread (overload shedding).
            "worker_class": QueueTimedWorker,
            "threads": settings.threads,
            "timeout": settings.timeout,
            "graceful_timeout": settings.graceful_timeout,
            "keepalive": 5,
            "accesslog": "-",
            "access_log_format": ACCESS_LOG_FORMAT,
            "errorlog": "-",
            "loglevel": settings.log_level,
            "proc_name": "flaskserve",
            "child_exit": _child_exit,
            # Writes the usage a worker still holds when it stops (SIGTERM, SIGHUP, max age).
            "worker_exit": _worker_exit,
        }
        if settings.grpc_port:
            options["post_worker_init"] = _grpc_worker_init(settings)
        if settings.log_format == "json":
            options["logger_class"] = JsonGunicornLogger
        else:
            options["logger_class"] = TextAccessLogger
        if os.path.isdir(SHM):
            # gthread's loop touches each worker's heartbeat file on every turn (twice per
            # request): keep it in memory, as gunicorn advises for containers, where a disk or
            # overlay file system can stall that `utime`.
            options["worker_tmp_dir"] = SHM
        if "control_socket_disable" in self.cfg.settings:
            # One control socket per user would be shared by every server on the machine.
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._app_factory()


class TextAccessLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger with a lean access line: the text `ACCESS_LOG_FORMAT` describes, made
    with one f-string and written to stdout with one `os.write` (atomic for a line, no lock).

    gunicorn's generic `access` builds a dict of every atom and request header and goes through
    `logging`: about 55 us per request on the benchmark machine, as much as serving a Flask hello
    route; this costs about 3 us (docs/benchmarks.md). Other destinations keep gunicorn's path.
    """

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if self.cfg.accesslog != "-":
            super().access(resp, req, environ, request_time)
            return
        sent = getattr(resp, "sent", None)
        get = environ.get
        millis = request_time.seconds * 1000 + request_time.microseconds // 1000
        line = (
            f'{get("REMOTE_ADDR", "-")} "{get("REQUEST_METHOD", "-")} {get("RAW_URI", "-")} '
            f'{get("SERVER_PROTOCOL", "-")}" {str(resp.status).split(None, 1)[0]} '
            f'{"-" if sent is None else sent} {millis}ms\n'
        )
        with contextlib.suppress(OSError):  # stdout closed: serving goes on without the line
            os.write(1, line.encode())


def _child_exit(server: Any, worker: Any) -> None:
    metrics.worker_exited(worker.pid)


def start_grpc(app: Flask, settings: Settings) -> GrpcServer | None:
    """The gRPC front door of `app` on `--grpc-port`, sharing its data plane, keys, limits and
    meter; None when the port is 0 or the app is not a flaskserve app."""
    if not settings.grpc_port:
        return None
    dataplane = app.extensions.get("flaskserve")
    control = app.extensions.get("flaskserve.control")
    service = app.extensions.get("flaskserve.service")
    if dataplane is None or control is None or service is None:
        log.warning("--grpc-port ignored: the app serves no flaskserve model repository")
        return None
    from flaskserve.protocol.grpc import server
    from flaskserve.service.grpc_guard import GrpcGuard

    guard = GrpcGuard(service, dataplane.repository)
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


def _grpc_worker_init(settings: Settings) -> Callable[[Any], None]:
    def post_worker_init(worker: Any) -> None:
        grpc_server = start_grpc(worker.wsgi, settings)
        if grpc_server is None:
            return
        worker.flaskserve_grpc = grpc_server
        stop_http = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            grpc_server.stop(settings.graceful_timeout)
            if callable(stop_http):
                stop_http(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    return post_worker_init


def _worker_exit(server: Any, worker: Any) -> None:
    """After the worker's last HTTP request: let its running gRPC calls finish, then write the
    usage it still holds and end the process (`worker.worker_exit`)."""
    grpc_server = getattr(worker, "flaskserve_grpc", None)
    if grpc_server is not None:
        grace = worker.cfg.graceful_timeout
        grpc_server.stop(grace).wait(grace)
    worker_exit(server, worker)


def serve_gunicorn(app_factory: Callable[[], Flask], settings: Settings) -> None:
    # Before the fork: the workers' metrics must all land in one shared folder.
    cleanup = metrics.prepare_multiprocess_dir()
    try:
        GunicornApp(app_factory, settings).run()
    finally:
        cleanup()


class _QuietHandler(WSGIRequestHandler):
    """Leaves the access line to `AccessLog`, which knows the request's duration."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class AccessLog:
    """WSGI middleware writing one line per request: client, request line, status, duration."""

    def __init__(self, app: Any, logger: logging.Logger, json: bool = False) -> None:
        self.app = app
        self.logger = logger
        self.json = json

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        status: list[str] = ["-"]

        def recording_start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info)

        try:
            return self.app(environ, recording_start_response)  # type: ignore[no-any-return]
        finally:
            if self.json:
                elapsed_s = time.perf_counter() - started
                self.logger.info("%s", access_json(environ, status[0], elapsed_s))
            else:
                self._text_line(environ, status[0], started)

    def _text_line(self, environ: dict[str, Any], status: str, started: float) -> None:
        query = environ.get("QUERY_STRING")
        path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
        elapsed = (time.perf_counter() - started) * 1000
        self.logger.info(
            '%s "%s %s %s" %s %.1fms',
            environ.get("REMOTE_ADDR", "-"),
            environ.get("REQUEST_METHOD"),
            path,
            environ.get("SERVER_PROTOCOL"),
            status,
            elapsed,
        )


def serve_debug(app: Flask, settings: Settings) -> None:
    """Flask's development server with the reloader: `app.run(debug=True)`, plus access lines."""
    logger = logging.getLogger("flaskserve.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
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
