"""Open Inference Protocol V2 (KServe V2 / Triton HTTP) routes, with the repository and
statistics extensions.

Every route is listed here, each with its `/versions/<v>` twin, so the public surface fits on one
screen. Readiness answers 503 when not ready, as KServe does, so load balancers and Kubernetes
probes read it the usual way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, request

from flaskserve.core.context import StatisticsReport
from flaskserve.core.coordination import RepositoryControl
from flaskserve.core.dataplane import DataPlane
from flaskserve.core.declared import DeclaredTensor
from flaskserve.core.errors import InvalidInput
from flaskserve.core.model import Model
from flaskserve.core.request import InferenceRequest
from flaskserve.protocol.codec import dumps, loads
from flaskserve.protocol.http_context import http_context
from flaskserve.protocol.infer import (
    HEADER_LENGTH,
    encode_infer_response,
    output_names,
    parse_infer_request,
)
from flaskserve.protocol.route_policy import admin_route, inference_route, model_route, open_route


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(dumps(payload), status=status, mimetype="application/json")


def infer_response(dataplane: DataPlane, name: str, version: str | None) -> Response:
    """Decode the current request as a V2 inference request, run it, encode the answer.

    The model is looked up first (an unknown or unavailable model is 404 or 503 whatever the
    body), then `model_infer_response` answers for it.
    """
    return model_infer_response(dataplane, dataplane.lookup(name, version), version)


def model_infer_response(dataplane: DataPlane, model: Model, version: str | None) -> Response:
    """The V2 answer of `model` (looked up for the `version` the client named) to the current
    request; what the request declares is checked by the data plane (the model's signature, the
    row and element limits) before any tensor is decoded."""

    def check(tensors: Sequence[DeclaredTensor], outputs: Sequence[str] | None) -> None:
        dataplane.check(model, tensors, outputs)

    parsed = parse_infer_request(request.get_data(), request.headers.get(HEADER_LENGTH), check)
    result = dataplane.infer(
        InferenceRequest(
            model,
            parsed.inputs,
            parsed.datatypes,
            output_names(parsed),
            http_context(),
            version,
            parsed.parameters,
            checked=True,
        )
    )
    body, json_length = encode_infer_response(result.model, result.outputs, parsed)
    if json_length is None:
        return Response(body, mimetype="application/json")
    return Response(
        body, mimetype="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
    )


def create_blueprint(
    dataplane: DataPlane, control: RepositoryControl, statistics: StatisticsReport
) -> Blueprint:
    bp = Blueprint("v2", __name__, url_prefix="/v2")
    repository = dataplane.repository

    @bp.get("")
    @open_route
    def server_metadata() -> Response:
        return json_response(dataplane.server_metadata())

    @bp.get("/health/live")
    @open_route
    def live() -> Response:
        return json_response({"live": True})

    @bp.get("/health/ready")
    @open_route
    def ready() -> Response:
        is_ready = repository.is_ready()
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    @bp.get("/models/<name>")
    @bp.get("/models/<name>/versions/<version>")
    @model_route
    def model_metadata(name: str, version: str | None = None) -> Response:
        return json_response(dataplane.model_metadata(name, version))

    @bp.get("/models/<name>/ready")
    @bp.get("/models/<name>/versions/<version>/ready")
    @open_route
    def model_ready(name: str, version: str | None = None) -> Response:
        is_ready = repository.is_model_ready(name, version)
        return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    @bp.post("/models/<name>/infer")
    @bp.post("/models/<name>/versions/<version>/infer")
    @inference_route("v2")
    def infer(name: str, version: str | None = None) -> Response:
        return infer_response(dataplane, name, version)

    # The statistics extension. `/models/stats` is matched before `/models/<name>`.
    @bp.get("/models/stats")
    @admin_route
    def all_model_statistics() -> Response:
        return json_response(statistics(None, None))

    @bp.get("/models/<name>/stats")
    @bp.get("/models/<name>/versions/<version>/stats")
    @model_route
    def model_statistics(name: str, version: str | None = None) -> Response:
        return json_response(statistics(name, version))

    @bp.post("/repository/index")
    @admin_route
    def repository_index() -> Response:
        body = request.get_data()
        ready_only = False
        if body:
            options = loads(body)
            if not isinstance(options, dict):
                raise InvalidInput("the index request body must be a JSON object, e.g. {}")
            ready_only = options.get("ready") is True
        return json_response(control.index(ready_only))

    @bp.post("/repository/models/<name>/load")
    @admin_route
    def load_model(name: str) -> Response:
        control.load(name)
        return json_response({})

    @bp.post("/repository/models/<name>/unload")
    @admin_route
    def unload_model(name: str) -> Response:
        control.unload(name)
        return json_response({})

    return bp
