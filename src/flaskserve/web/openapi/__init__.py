"""OpenAPI 3.1 for the routes this app really serves, plus `/docs` (Swagger UI, vendored in
`static/vendor/`) to read and try them.

`responses` holds the building blocks of an operation (error answers, security schemes), `schemas`
the shared and per-model schemas, `operations` what each known route does (add a route's entry
there), `document` assembles the document from the app's URL map and models.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template

from flaskserve.core.dataplane import DataPlane
from flaskserve.protocol.route_policy import open_route
from flaskserve.protocol.v2 import json_response
from flaskserve.version import __version__
from flaskserve.web.openapi.document import Access, build_document, openapi_path

__all__ = ["build_document", "create_blueprint", "openapi_path"]


def create_blueprint(dataplane: DataPlane, access: Access | None = None) -> Blueprint:
    """`/openapi.json` and `/docs` (Swagger UI); `access` (under `--auth`) tells the document
    which routes need an API key."""
    # The templates are the web package's, one folder up.
    bp = Blueprint("docs", __name__, template_folder="../templates")

    @bp.get("/openapi.json")
    @open_route
    def openapi() -> Response:
        return json_response(build_document(current_app, dataplane, access))

    @bp.get("/docs")
    @open_route
    def docs_page() -> str:
        return render_template("docs.html", version=__version__)

    return bp
