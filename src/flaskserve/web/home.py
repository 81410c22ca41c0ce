"""The playground: `GET /` (models, as HTML for browsers or JSON), `GET /models/<name>` (a form
built from the model's signature), and the seed's `GET /home/<name>` greeting.

Pages are rendered from the repository's state when asked; inference goes through the ordinary
V2 route from the browser, so the playground exercises exactly what clients use. With API keys
(`--auth`) these pages are open, so a model that failed to load shows a generic reason, never
the error itself (it may name files on the server); the repository index, for admin keys, and
the server log keep the details.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, render_template, request

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import ModelNotFound
from flaskserve.core.model import TensorSpec
from flaskserve.core.repository import ModelEntry
from flaskserve.protocol.route_policy import open_route
from flaskserve.protocol.v2 import json_response
from flaskserve.settings import Settings
from flaskserve.version import __version__
from flaskserve.web.examples import example_request, widget_for
from flaskserve.web.generation_snippets import generation_snippets
from flaskserve.web.snippets import base_url, infer_path, snippets

#: What open pages show for a model that failed to load when the server has API keys.
HIDDEN_REASON = "failed to load; see the server log"


def signature(entry: ModelEntry) -> tuple[list[TensorSpec], list[TensorSpec], str]:
    """Inputs, outputs and platform of the served version, or of `model.toml` when none is."""
    if entry.default is not None:
        model = entry.default
        return model.inputs, model.outputs, model.platform
    config = entry.config
    if config is None:
        return [], [], ""
    return list(config.inputs), list(config.outputs), config.runtime or ""


def shown_reason(reason: str, hide: bool) -> str:
    """`reason` as an open page may show it: "unloaded" says nothing secret; a load error may
    hold paths and library messages, so it is replaced when `hide`."""
    return HIDDEN_REASON if hide and reason and reason != "unloaded" else reason


def model_summary(entry: ModelEntry, hide_reason: bool = False) -> dict[str, Any]:
    inputs, outputs, platform = signature(entry)
    reason = shown_reason(entry.reason, hide_reason)
    return {
        "name": entry.name,
        "state": entry.state,
        "versions": [s.version for s in entry.version_status()],
        **({"reason": reason} if reason else {}),
        "platform": platform,
        "inputs": [spec.as_metadata() for spec in inputs],
        "outputs": [spec.as_metadata() for spec in outputs],
        "infer": infer_path(entry.name),
    }


def wants_json() -> bool:
    """JSON unless the client prefers HTML: browsers ask for text/html, curl sends */*."""
    accept = request.accept_mimetypes
    return accept.best_match(["application/json", "text/html"]) != "text/html"


def create_blueprint(dataplane: DataPlane, settings: Settings | None = None) -> Blueprint:
    """The playground's routes; `settings` give the address snippets show and whether load errors
    are hidden (`--auth`)."""
    settings = settings or Settings()
    server_url = base_url(settings.public_url, settings.host, settings.port)
    hide = settings.auth is not None
    bp = Blueprint(
        "home",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/assets",
    )
    repository = dataplane.repository

    @bp.get("/")
    @open_route
    def index() -> Response | str:
        models = [model_summary(entry, hide) for entry in repository.entries()]
        if wants_json():
            return json_response({"server": "flaskserve", "version": __version__, "models": models})
        return render_template("index.html", models=models, version=__version__)

    @bp.get("/models/<name>")
    @open_route
    def model_page(name: str) -> tuple[str, int] | str:
        try:
            entry = repository.entry(name)
        except ModelNotFound as exc:
            known = [e.name for e in repository.entries()]
            page = render_template(
                "missing.html", message=str(exc), known=known, version=__version__
            )
            return page, 404
        inputs, outputs, _ = signature(entry)
        summary = model_summary(entry, hide)
        if entry.default is not None and entry.default.generative:
            return render_template(
                "chat.html",
                model=summary,
                snippets=generation_snippets(server_url, name),
                version=__version__,
            )
        widget = widget_for(name, inputs, outputs)
        page_data = {
            **summary,
            "ready": entry.default is not None,
            "widget": asdict(widget),
            "example": example_request(inputs),
            "auth": hide,
        }
        return render_template(
            "model.html",
            model=summary,
            widget=widget,
            page_data=page_data,
            snippets=snippets(server_url, name, inputs, outputs, auth=hide),
            version=__version__,
        )

    @bp.get("/dashboard")
    @open_route
    def dashboard() -> str:
        """The live dashboard; its charts poll `/dashboard/data` (gate.dashboard_data)."""
        page_data = {"auth": hide, "data": "/dashboard/data", "interval_ms": 2000}
        return render_template("dashboard.html", page_data=page_data, version=__version__)

    @bp.get("/home/<name>")
    @open_route
    def greet(name: str) -> Response:
        return Response(f"hello,{name}", mimetype="text/plain")

    return bp
