"""Running the app: gunicorn for production, Flask's reloading dev server with `--debug`.

gunicorn forks its workers before the app is built, so each worker loads its own model instances
(no runtime thread pool crosses a fork). Anything that must happen once, such as building the
default models, happens in the master before gunicorn starts.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from werkzeug.serving import WSGIRequestHandler

from flaskserve.settings import Settings

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
            "worker_class": "gthread",
            "threads": settings.threads,
            "timeout": settings.timeout,
            "graceful_timeout": settings.graceful_timeout,
            "keepalive": 5,
            "accesslog": "-",
            "access_log_format": ACCESS_LOG_FORMAT,
            "errorlog": "-",
            "loglevel": settings.log_level,
            "proc_name": "flaskserve",
        }
        if "control_socket_disable" in self.cfg.settings:
            # One control socket per user would be shared by every server on the machine.
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._app_factory()


def serve_gunicorn(app_factory: Callable[[], Flask], settings: Settings) -> None:
    GunicornApp(app_factory, settings).run()


class _QuietHandler(WSGIRequestHandler):
    """Leaves the access line to `AccessLog`, which knows the request's duration."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class AccessLog:
    """WSGI middleware writing one line per request: client, request line, status, duration."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        self.app = app
        self.logger = logger

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
            query = environ.get("QUERY_STRING")
            path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
            elapsed = (time.perf_counter() - started) * 1000
            self.logger.info(
                '%s "%s %s %s" %s %.1fms',
                environ.get("REMOTE_ADDR", "-"),
                environ.get("REQUEST_METHOD"),
                path,
                environ.get("SERVER_PROTOCOL"),
                status[0],
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
    app.wsgi_app = AccessLog(app.wsgi_app, logger)  # type: ignore[method-assign]
    app.run(
        host=settings.host,
        port=settings.port,
        debug=True,
        use_reloader=True,
        request_handler=_QuietHandler,
    )
