"""`--debug`: Flask's development server with its reloader, one process, access lines to stderr."""

from __future__ import annotations

import os
import sys

from flask import Flask
from werkzeug.serving import WSGIRequestHandler

from flaskserve.serving.access_log import AccessLog, access_logger
from flaskserve.serving.grpc_door import start_grpc
from flaskserve.settings import Settings


class _QuietHandler(WSGIRequestHandler):
    """Leaves the access line to `AccessLog`, which knows the request's duration."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


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
