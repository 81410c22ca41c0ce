"""OpenAPI 3.1 for the routes this app really serves, plus `/docs` to read and try them.

Paths come from the app's URL map, so a route added anywhere (even by a user on a `ModelServer`
app) is listed; the ones flaskserve knows get their summary and schemas from `_OPERATIONS`. Each
model adds concrete paths (`/v2/models/digits/infer`, `/v1/models/digits:predict`) whose schemas
and examples come from its signature, so a client generator or a person gets the exact tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, render_template

from flaskserve import __version__
from flaskserve.core.dataplane import DataPlane
from flaskserve.core.model import DATATYPES, TensorSpec
from flaskserve.protocol.infer import HEADER_LENGTH
from flaskserve.protocol.sagemaker import TARGET_MODEL_HEADER
from flaskserve.protocol.v2 import json_response
from flaskserve.web.examples import example_instances, example_request
from flaskserve.web.home import signature

_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_COMPONENT_NAME = re.compile(r"[^A-Za-z0-9._-]")
_INTEGER = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
_FLOAT = {"FP16", "FP32", "FP64"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {key: {"value": value} for key, value in examples.items()}
    return {"application/json": media}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = _json(schema)
    return response


def _text(description: str, media_type: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


_ERROR = _ref("Error")
_ERRORS = {
    "400": _answer("The request is malformed or does not fit the model's signature.", _ERROR),
    "404": _answer("Unknown model or version.", _ERROR),
    "503": _answer("The model is not ready (failed to load, or unloaded).", _ERROR),
}

_CONTROL_OFF = _answer(
    "Model control is off (serve with --model-control, or --auth and an admin key).", _ERROR
)


def _scalar_schema(datatype: str) -> dict[str, Any]:
    if datatype == "BYTES":
        return {"type": "string"}
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype in _INTEGER:
        return {"type": "integer"}
    return {"type": "number"}


COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What to change."}},
    },
    "Tensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
            "data": {
                "type": "array",
                "description": "Row-major values, flat or nested; absent when binary_data_size "
                "says the tensor follows the JSON header as raw bytes.",
            },
        },
    },
    "RequestedOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data": {"type": "boolean"}},
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_output": {"type": "boolean"}},
            },
            "inputs": {"type": "array", "minItems": 1, "items": _ref("Tensor")},
            "outputs": {"type": "array", "items": _ref("RequestedOutput")},
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": _ref("Tensor")},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        },
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            "state": {"type": "string"},
            "reason": {"type": "string"},
        },
    },
    "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    "ModelReady": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "RepositoryIndexRequest": {
        "type": "object",
        "properties": {"ready": {"type": "boolean", "description": "Only READY models."}},
    },
    "RepositoryIndex": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "state"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                "reason": {"type": "string"},
            },
        },
    },
    "V1Request": {
        "type": "object",
        "required": ["instances"],
        "properties": {"instances": {"type": "array", "minItems": 1}},
    },
    "V1Response": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array"}},
    },
    "Ping": {"type": "object", "properties": {"status": {"type": "string"}}},
    "ServerIndex": {
        "type": "object",
        "properties": {
            "server": {"type": "string"},
            "version": {"type": "string"},
            "models": {"type": "array", "items": {"type": "object"}},
        },
    },
}


def _infer_request_body(examples: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            **_json(_ref("InferRequest"), examples),
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "contentMediaType": "application/octet-stream",
                    "description": f"Binary tensor extension: a JSON request of "
                    f"{HEADER_LENGTH} bytes, then the raw tensors it sizes.",
                },
            },
        },
    }


_BINARY_HEADER = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "description": "Length of the JSON part of a binary-extension request.",
    "schema": {"type": "integer", "minimum": 1},
}


def _op(tag: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"tags": [tag], "summary": summary, "responses": responses, **extra}


#: Flask endpoint -> builder of its OpenAPI operation (given the examples of the served models).
_OPERATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "v2.server_metadata": lambda ex: _op(
        "V2",
        "Server metadata",
        {"200": _answer("Name, version, extensions.", _ref("ServerMetadata"))},
    ),
    "v2.live": lambda ex: _op("V2", "Liveness", {"200": _answer("Alive.", _ref("Live"))}),
    "v2.ready": lambda ex: _op(
        "V2",
        "Readiness of the whole server",
        {
            "200": _answer("Every model is ready.", _ref("Ready")),
            "503": _answer("Some model is not ready.", _ref("Ready")),
        },
    ),
    "v2.model_metadata": lambda ex: _op(
        "V2",
        "Model metadata: versions, platform, signature",
        {"200": _answer("Metadata.", _ref("ModelMetadata")), "404": _ERRORS["404"]},
    ),
    "v2.model_ready": lambda ex: _op(
        "V2",
        "Model readiness",
        {
            "200": _answer("Ready.", _ref("ModelReady")),
            "503": _answer("Not ready.", _ref("ModelReady")),
            "404": _ERRORS["404"],
        },
    ),
    "v2.infer": lambda ex: _op(
        "V2",
        "Inference (JSON or binary tensors)",
        {
            "200": {
                "description": "Outputs; binary ones follow the JSON header when asked for.",
                "content": {
                    **_json(_ref("InferResponse")),
                    "application/octet-stream": {
                        "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                    },
                },
            },
            **_ERRORS,
        },
        requestBody=_infer_request_body(),
        parameters=[_BINARY_HEADER],
    ),
    "v2.repository_index": lambda ex: _op(
        "V2 repository",
        "Every model version with its state",
        {"200": _answer("The index.", _ref("RepositoryIndex"))},
        requestBody={
            "required": False,
            "content": _json(_ref("RepositoryIndexRequest"), {"all": {}}),
        },
    ),
    "v2.load_model": lambda ex: _op(
        "V2 repository",
        "(Re)load a model from the repository, in every worker",
        {
            "200": _answer("Loaded.", {"type": "object"}),
            "400": _answer("It failed to load; the reason says why.", _ERROR),
            "403": _CONTROL_OFF,
            "404": _ERRORS["404"],
        },
    ),
    "v2.unload_model": lambda ex: _op(
        "V2 repository",
        "Unload a model, in every worker",
        {
            "200": _answer("Unloaded.", {"type": "object"}),
            "403": _CONTROL_OFF,
            "404": _ERRORS["404"],
        },
    ),
    "v1.model_status": lambda ex: _op(
        "V1",
        "Model readiness (KServe V1)",
        {
            "200": _answer("Ready.", _ref("ModelReady")),
            "503": _answer("Not ready.", _ref("ModelReady")),
            "404": _ERRORS["404"],
        },
    ),
    "v1.predict": lambda ex: _op(
        "V1",
        "Predict (KServe V1 / TF-Serving)",
        {"200": _answer("One prediction per instance.", _ref("V1Response")), **_ERRORS},
        requestBody={"required": True, "content": _json(_ref("V1Request"))},
    ),
    "sagemaker.ping": lambda ex: _op(
        "SageMaker",
        "SageMaker health check",
        {
            "200": _answer("Ready.", _ref("Ping")),
            "503": _answer("Not ready.", _ref("Ping")),
        },
    ),
    "sagemaker.invocations": lambda ex: _op(
        "SageMaker",
        "SageMaker invocation: a V2 or V1 request, or CSV rows",
        {"200": _answer("V2 or V1 response.", {"type": "object"}), **_ERRORS},
        parameters=[
            {
                "name": TARGET_MODEL_HEADER,
                "in": "header",
                "required": False,
                "description": "The model to call when several are served.",
                "schema": {"type": "string"},
            }
        ],
        requestBody={
            "required": True,
            "content": {
                **_json({"oneOf": [_ref("InferRequest"), _ref("V1Request")]}, ex.get("sagemaker")),
                "text/csv": {"schema": {"type": "string"}},
            },
        },
    ),
    "home.index": lambda ex: _op(
        "Playground",
        "The models: an HTML page for browsers, JSON for Accept: application/json",
        {
            "200": {
                "description": "Models with state, versions and signature.",
                "content": {
                    "text/html": {"schema": {"type": "string"}},
                    **_json(_ref("ServerIndex")),
                },
            }
        },
    ),
    "home.model_page": lambda ex: _op(
        "Playground",
        "A model's playground page (drawing pad, text boxes or JSON editor)",
        {
            "200": _text("HTML page.", "text/html"),
            "404": _text("Unknown model.", "text/html"),
        },
    ),
    "home.greet": lambda ex: _op(
        "Playground",
        "The classic Flask greeting: hello,<name>",
        {"200": _text("Greeting.", "text/plain")},
    ),
    "static": lambda ex: _op(
        "Application",
        "Flask's own static folder (for files an application adds; flaskserve ships none)",
        {"200": {"description": "The file."}, "404": {"description": "No such file."}},
    ),
    "home.static": lambda ex: _op(
        "Playground",
        "Playground assets (CSS, JavaScript), served by the package",
        {"200": {"description": "The file."}, "404": {"description": "No such file."}},
    ),
    "metrics.scrape": lambda ex: _op(
        "Operations",
        "Prometheus metrics of every worker (see docs/metrics.md)",
        {
            "200": _text("Prometheus text exposition format.", "text/plain")
        },
    ),
    "docs.openapi": lambda ex: _op(
        "Operations", "This OpenAPI document", {"200": _answer("OpenAPI 3.1.", {"type": "object"})}
    ),
    "docs.docs_page": lambda ex: _op(
        "Operations",
        "Interactive API docs",
        {"200": _text("HTML page.", "text/html")},
    ),
}


def openapi_path(rule: str) -> str:
    """`/v2/models/<name>/versions/<version>` -> `/v2/models/{name}/versions/{version}`."""
    return _RULE_ARGUMENT.sub(r"{\1}", rule)


def _summary(app: Flask, endpoint: str) -> str:
    """A route flaskserve does not know (added by an application) is summed up by the first
    line of its view's docstring."""
    doc = (app.view_functions[endpoint].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else endpoint


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method}_{words}"


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{([^{}]+)}", path)
    ]


def _tensor_schema(spec: TensorSpec, metadata: bool = False) -> dict[str, Any]:
    dims = len(spec.shape)
    return {
        "type": "object",
        "description": f"{spec.name}: {spec.datatype} [{', '.join(map(str, spec.shape))}]",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"const": spec.name},
            "datatype": {"const": spec.datatype},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "minItems": dims,
                "maxItems": dims,
            },
            "parameters": {"type": "object"},
            "data": {
                "type": "array",
                "items": {"anyOf": [_scalar_schema(spec.datatype), {"type": "array"}]},
            },
        },
    }


def _model_components(
    key: str, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict[str, Any]:
    return {
        f"{key}.InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {
                    "type": "array",
                    "minItems": len(inputs),
                    "maxItems": len(inputs),
                    "items": {"oneOf": [_tensor_schema(spec) for spec in inputs]},
                },
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"enum": [spec.name for spec in outputs]},
                            "parameters": {"type": "object"},
                        },
                    },
                },
            },
        },
        f"{key}.InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {
                    "type": "array",
                    "items": {"oneOf": [_tensor_schema(spec) for spec in outputs]},
                },
            },
        },
    }


def _batchable(inputs: list[TensorSpec]) -> bool:
    """V1 reads instances along the first dimension, so every input needs a batch dimension."""
    return bool(inputs) and all(spec.shape[:1] == (-1,) for spec in inputs)


def build_document(app: Flask, dataplane: DataPlane) -> dict[str, Any]:
    entries = dataplane.repository.entries()
    models = [(entry.name, *signature(entry)[:2]) for entry in entries]
    examples: dict[str, Any] = {}
    if len(models) == 1 and models[0][1]:
        name, inputs, _ = models[0]
        examples["sagemaker"] = {name: example_request(inputs)}

    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        path = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            builder = _OPERATIONS.get(rule.endpoint)
            if builder is not None:
                operation = builder(examples)
            else:
                operation = _op("Application", _summary(app, rule.endpoint),
                                {"200": {"description": "OK."}})
            operation["operationId"] = _operation_id(method.lower(), path)
            parameters = _path_parameters(path) + operation.pop("parameters", [])
            if parameters:
                operation["parameters"] = parameters
            paths.setdefault(path, {})[method.lower()] = operation

    components = dict(COMPONENTS)
    for name, inputs, outputs in models:
        if not inputs or not outputs:
            continue
        key = "model." + _COMPONENT_NAME.sub("_", name)
        components.update(_model_components(key, inputs, outputs))
        request_example = {"example": example_request(inputs)}
        paths[f"/v2/models/{name}/infer"] = {
            "post": _op(
                f"Model {name}",
                f"Inference on {name}",
                {"200": _answer("Outputs.", _ref(f"{key}.InferResponse")), **_ERRORS},
                operationId=_operation_id("post", f"model {name} infer"),
                requestBody={
                    "required": True,
                    "content": _json(_ref(f"{key}.InferRequest"), request_example),
                },
            )
        }
        if _batchable(inputs):
            paths[f"/v1/models/{name}:predict"] = {
                "post": _op(
                    f"Model {name}",
                    f"V1 predict on {name}",
                    {"200": _answer("Predictions.", _ref("V1Response")), **_ERRORS},
                    operationId=_operation_id("post", f"model {name} v1 predict"),
                    requestBody={
                        "required": True,
                        "content": _json(_ref("V1Request"), {"example": example_instances(inputs)}),
                    },
                )
            }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flaskserve",
            "version": __version__,
            "description": "Open Inference Protocol V2 (with the repository and binary tensor "
            "extensions), KServe V1 and SageMaker routes over the same models, plus the "
            "playground and operations routes. Per-model paths carry each model's signature.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


def create_blueprint(dataplane: DataPlane) -> Blueprint:
    bp = Blueprint("docs", __name__, template_folder="templates")

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return json_response(build_document(current_app, dataplane))

    @bp.get("/docs")
    def docs_page() -> str:
        return render_template("docs.html", version=__version__)

    return bp
