"""`create_app`: the Flask application that serves a model repository over every front door,
and `services_of`: what an app serves with (its data plane, repository control, statistics and
gate), for what runs beside it (the gRPC door, the reloader).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from flaskserve import gate
from flaskserve.core import observers
from flaskserve.core.context import StatisticsReport
from flaskserve.core.coordination import RepositoryControl, generations
from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import FlaskServeError, ModelFailed
from flaskserve.core.repository import Loader, ModelRepository
from flaskserve.gate import browser, policy
from flaskserve.gate.gate import Gate
from flaskserve.gate.steps import request_limits, steps
from flaskserve.observability import endpoint as metrics_endpoint
from flaskserve.observability import requests as request_hooks
from flaskserve.observability import statistics
from flaskserve.observability.metrics import PrometheusObserver
from flaskserve.protocol import openai, openai_generate, sagemaker, v1, v2, v2_generate
from flaskserve.protocol.hook_chain import HookChain
from flaskserve.protocol.http_context import current
from flaskserve.protocol.v2 import json_response
from flaskserve.runtimes.context import RuntimeOptions
from flaskserve.runtimes.registry import loader
from flaskserve.runtimes.threads import served
from flaskserve.settings import Settings
from flaskserve.storage import open_mirror
from flaskserve.web import home, openapi

log = logging.getLogger("flaskserve")
#: The `app.extensions` key of an app's `Services` (read them with `services_of`).
_SERVICES = "flaskserve"


@dataclass(frozen=True)
class Services:
    """What one app serves with, made once by `create_app` and shared by its front doors."""

    dataplane: DataPlane
    control: RepositoryControl
    statistics: StatisticsReport
    gate: Gate


def services_of(app: Flask) -> Services | None:
    """The services `create_app` gave `app`; None for an app it did not make."""
    found = app.extensions.get(_SERVICES)
    return found if isinstance(found, Services) else None


def open_repository(settings: Settings) -> ModelRepository:
    """The repository `settings` point at (the embedded defaults when none), with models loaded.

    An `s3://` repository (or a folder whose models keep versions in S3) is read from its mirror
    in the cache, synced first unless the CLI already did; each load through the API re-syncs
    that model.
    """
    sync = None
    if settings.repository is None:
        from flaskserve.models.defaults import default_repository

        root = default_repository(Path(settings.cache_dir))
    elif (mirror := open_mirror(settings.repository, Path(settings.cache_dir))) is not None:
        mirror.ensure_synced()
        root, sync = mirror.root, mirror.sync
    else:
        root = Path(settings.repository)
        if not root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a folder")
    repository = ModelRepository(root, model_loader(settings), sync=sync)
    repository.load_all()
    return repository


def runtime_options(settings: Settings) -> RuntimeOptions:
    """What the runtimes need of the settings, handed to them as an argument. `--debug` serves
    from one process, whatever `workers` says."""
    workers = 1 if settings.debug else settings.worker_count
    options = RuntimeOptions(cache_dir=Path(settings.cache_dir))
    return served(options, settings.runtime_threads, workers)


def model_loader(settings: Settings) -> Loader:
    """The repository's loader: the runtimes with `settings`' options, load times to Prometheus
    (installed first, so models loaded before `create_app` are measured too)."""
    install_metrics()
    return loader(runtime_options(settings))


def install_metrics() -> None:
    """Send the core's batching and load events to the Prometheus metrics of this process."""
    if not isinstance(observers.current(), PrometheusObserver):
        observers.install(PrometheusObserver())


def model_control_enabled(settings: Settings) -> bool:
    """Whether load/unload may change what is served: asked for with `--model-control`, or
    implied by `--auth`, whose gate then lets only admin keys reach those routes."""
    return settings.model_control or bool(settings.auth)


def create_app(
    settings: Settings | None = None, repository: ModelRepository | None = None
) -> Flask:
    """A Flask app serving `repository` (or the one `settings` name); add your own routes to it."""
    settings = settings or Settings.from_env()
    state_dir = Path(settings.state_dir) if settings.state_dir else None
    baseline = generations(state_dir)
    if repository is None:
        repository = open_repository(settings)
    install_metrics()
    app = Flask("flaskserve")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    dataplane = DataPlane(repository, steps(settings), request_limits(settings))
    control = RepositoryControl(
        repository, state_dir, baseline, enabled=model_control_enabled(settings)
    )
    statistics_report = partial(statistics.report, repository)
    app.register_blueprint(v2.create_blueprint(dataplane, control, statistics_report))
    app.register_blueprint(v1.create_blueprint(dataplane))
    app.register_blueprint(openai.create_blueprint(dataplane))
    app.register_blueprint(openai_generate.create_blueprint(dataplane))
    app.register_blueprint(v2_generate.create_blueprint(dataplane))
    app.register_blueprint(sagemaker.create_blueprint(dataplane))
    app.register_blueprint(home.create_blueprint(dataplane, settings))
    access = (lambda endpoint, _path: policy.access_of(app, endpoint)) if settings.auth else None
    app.register_blueprint(openapi.create_blueprint(dataplane, access))
    app.register_blueprint(metrics_endpoint.create_blueprint(dataplane))
    hooks = HookChain()  # ours run as one Flask hook of each kind: see protocol.hook_chain
    request_hooks.install(app, dataplane, hooks)
    # Before the service gate: a request a browser was tricked into sending costs no key lookup.
    browser.install(app, settings, hooks)
    # After the observability hooks, so requests this refuses (401/429/503) are still counted.
    the_gate = gate.install(app, dataplane, settings, hooks)
    hooks.install(app)
    app.extensions[_SERVICES] = Services(dataplane, control, statistics_report, the_gate)
    _register_error_handlers(app)
    return app


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(FlaskServeError)
    def flaskserve_error(exc: FlaskServeError) -> Response:
        """Every refusal and failure a client can be told about, from any layer or hook."""
        request_id = current().request_id or "-"
        if isinstance(exc, ModelFailed):
            exc.log_to(log, request_id)
        response = json_response({"error": exc.client_message(request_id)}, exc.status_code)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return json_response(
            {
                "error": f"request body is larger than the {limit} bytes this server accepts; "
                "send less per request or raise --max-request-bytes"
            },
            413,
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404:
            message = f"no route {request.method} {request.path}; see GET /v2 and GET /"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        else:
            message = exc.description or exc.name
        response = json_response({"error": message}, status)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": "internal server error; the server log has details"}, 500)
