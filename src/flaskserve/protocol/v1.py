"""KServe V1 / TF-Serving style routes: `{"instances": [...]}` in, `{"predictions": [...]}` out.

`GET /v1/models/<m>` answers KServe's `name` and `ready` and, on the same object, OpenAI's model
fields (`id`, `object`, `created`, `owned_by`), so both kinds of client read the one route.

V1 carries no datatypes, so instances are read with the model's declared input datatypes. A model
with one input takes each instance as that input's row; a model with several inputs takes each
instance as an object keyed by input name. One output gives one prediction per instance; several
give an object per instance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Response, request

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.declared import MAX_DIMS, DeclaredTensor, declare
from flaskserve.core.errors import InvalidInput, ModelNotReady
from flaskserve.core.model import Arrays, Model
from flaskserve.core.request import InferenceRequest
from flaskserve.protocol.codec import decode_json_data, loads
from flaskserve.protocol.http_context import http_context
from flaskserve.protocol.openai import model_object
from flaskserve.protocol.route_policy import inference_route, open_route
from flaskserve.protocol.v2 import json_response


def create_blueprint(dataplane: DataPlane) -> Blueprint:
    bp = Blueprint("v1", __name__, url_prefix="/v1")
    repository = dataplane.repository

    @bp.get("/models/<name>")
    @open_route
    def model_status(name: str) -> Response:
        try:
            model: Model | None = repository.get(name)
        except ModelNotReady:
            model = None
        is_ready = model is not None
        return json_response(
            {"name": name, "ready": is_ready, **model_object(name, model)},
            200 if is_ready else 503,
        )

    @bp.post("/models/<name>:predict")
    @inference_route("v1")
    def predict(name: str) -> Response:
        model = dataplane.lookup(name)  # 404 or 503 whatever the body
        body = loads(request.get_data())
        if not isinstance(body, dict) or "instances" not in body:
            raise InvalidInput('a V1 predict request is a JSON object {"instances": [...]}')
        return json_response(predict_instances(dataplane, model, body["instances"]))

    return bp


def predict_instances(dataplane: DataPlane, model: Model, instances: Any) -> dict[str, Any]:
    """V1's answer of `model` (looked up by the door) to `instances`."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list, one entry per prediction")
    return predict_arrays(dataplane, model, instances_to_arrays(dataplane, model, instances))


def predict_arrays(dataplane: DataPlane, model: Model, inputs: Arrays) -> dict[str, Any]:
    """V1's answer of `model` to `inputs`, decoded with its datatypes from shapes the data plane
    checked (`DataPlane.check`) before they were decoded."""
    datatypes = {spec.name: spec.datatype for spec in model.inputs}
    result = dataplane.infer(
        InferenceRequest(model, inputs, datatypes, None, http_context(), checked=True)
    )
    return {"predictions": predictions(result.model, result.outputs)}


def instances_to_arrays(dataplane: DataPlane, model: Model, instances: list[Any]) -> Arrays:
    """One array per input; the shapes the nesting implies (`len(instances)` rows) are checked
    by the data plane (signature, limits) before any array is built."""
    if len(model.inputs) == 1:
        columns = {model.inputs[0].name: instances}
    else:
        columns = _columns(model, instances)
    datatypes = {spec.name: spec.datatype for spec in model.inputs}
    declared = [_declared(name, datatypes[name], values) for name, values in columns.items()]
    dataplane.check(model, declared, None)
    return {
        tensor.name: decode_json_data(tensor.name, tensor.shape, tensor.datatype, columns[name])
        for name, tensor in zip(columns, declared, strict=True)
    }


def _columns(model: Model, instances: list[Any]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {spec.name: [] for spec in model.inputs}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InvalidInput(
                f"instances[{index}] must be an object keyed by input name "
                f"({', '.join(columns)}), since model {model.name!r} has several inputs"
            )
        for key, value in instance.items():
            if key not in columns:
                raise InvalidInput(
                    f"instances[{index}] has {key!r}, which is not an input of model "
                    f"{model.name!r} ({', '.join(columns)})"
                )
            columns[key].append(value)
    missing = [key for key, values in columns.items() if len(values) != len(instances)]
    if missing:
        raise InvalidInput(f"every instance needs the input(s) {', '.join(missing)}")
    return columns


def _declared(name: str, datatype: str, values: list[Any]) -> DeclaredTensor:
    """The shape the nesting of `values` implies, read along the first element of each level."""
    shape = []
    probe: Any = values
    while isinstance(probe, list):
        shape.append(len(probe))
        if len(shape) > MAX_DIMS:  # refused here, without walking the rest of the nesting
            raise InvalidInput(
                f"input {name!r}: instances are nested more than {MAX_DIMS} levels deep; an "
                f"array has at most {MAX_DIMS} dimensions"
            )
        probe = probe[0] if probe else None
    return declare(name, datatype, shape)


def predictions(model: Model, outputs: Arrays) -> Any:
    """One prediction per instance; numeric arrays go to orjson as they are (no Python lists)."""
    columns = {name: _column(array) for name, array in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    rows = len(next(iter(outputs.values())))
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


def _column(array: np.ndarray) -> Any:
    if array.dtype == object:
        return _text(array.tolist())
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def _text(value: Any) -> Any:
    if isinstance(value, list):
        return [_text(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value
