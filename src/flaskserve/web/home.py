"""`GET /` (what this server serves, as JSON) and the seed's `GET /home/<name>` greeting."""

from __future__ import annotations

from flask import Blueprint, Response

from flaskserve import __version__
from flaskserve.core.dataplane import DataPlane
from flaskserve.protocol.v2 import json_response


def create_blueprint(dataplane: DataPlane) -> Blueprint:
    bp = Blueprint("home", __name__)

    @bp.get("/")
    def index() -> Response:
        models = [
            {
                "name": entry.name,
                "state": entry.state,
                "versions": [s.version for s in entry.version_status()],
                **({"reason": entry.reason} if entry.reason else {}),
                "infer": f"/v2/models/{entry.name}/infer",
            }
            for entry in dataplane.repository.entries()
        ]
        return json_response({"server": "flaskserve", "version": __version__, "models": models})

    @bp.get("/home/<name>")
    def greet(name: str) -> Response:
        return Response(f"hello,{name}", mimetype="text/plain")

    return bp
