"""The OpenAPI 3.1 document of one app: every route in its URL map, plus concrete per-model
paths (`/v2/models/digits/infer`, `/v1/models/digits:predict`) whose schemas and examples come
from each model's signature, so a client generator or a person gets the exact tensors."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Flask

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.model import TensorSpec
from flaskserve.version import __version__
from flaskserve.web.examples import example_instances, example_request, example_response
from flaskserve.web.home import signature
from flaskserve.web.openapi.generation import GENERATION_SCHEMAS
from flaskserve.web.openapi.operations import known_operation
from flaskserve.web.openapi.responses import (
    ERROR,
    ERRORS,
    SECURITY_SCHEMES,
    UNAUTHORIZED,
    answer,
    browser_errors,
    json_content,
    operation,
    ref,
)
from flaskserve.web.openapi.schemas import COMPONENTS, model_components

#: (Flask endpoint, path) -> "open" when the route needs no API key (`gate.policy.access_of`);
#: given when the server runs with `--auth`.
Access = Callable[[str, str], str]
_OPEN = "open"
#: Any key, for the operations of routes that need one.
_KEYED: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]

_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_COMPONENT_NAME = re.compile(r"[^A-Za-z0-9._-]")


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


def _path_parameters(path: str, examples: dict[str, str]) -> list[dict[str, Any]]:
    """The parameters of `path`, each with an example (a served model's name and version) that
    Swagger UI's "Try it out" fills in."""
    parameters = []
    for name in re.findall(r"{([^{}]+)}", path):
        parameter: dict[str, Any] = {
            "name": name, "in": "path", "required": True, "schema": {"type": "string"}
        }
        if name in examples:
            parameter["example"] = examples[name]
        parameters.append(parameter)
    return parameters


def _parameter_examples(models: list[tuple[str, list[TensorSpec], list[TensorSpec]]],
                        versions: dict[str, str]) -> dict[str, str]:
    """Path parameter examples: the first model with a signature and its served version."""
    examples = {"name": "kim"}  # /home/<name>, unless a model is served
    for name, inputs, _ in models:
        if inputs:
            examples["name"] = name
            if versions.get(name):
                examples["version"] = versions[name]
            break
    return examples


def _secure(found: dict[str, Any], access: Access | None, endpoint: str, path: str) -> None:
    """With API keys on, an open route says it needs none; the others document their 401."""
    if access is None:
        return
    if access(endpoint, path) == _OPEN:
        found["security"] = []
    elif "401" not in found["responses"]:
        # A new dict: `found` is a shallow copy whose responses are shared with OPERATIONS.
        found["responses"] = {**found["responses"], "401": UNAUTHORIZED}


def _guarded(responses: dict[str, Any], checks_body: bool) -> dict[str, Any]:
    """`responses` plus the browser guards' refusals it does not document itself, by status."""
    extra = browser_errors(ERROR, checks_body)
    return dict(sorted({**extra, **responses}.items()))


def _batchable(inputs: list[TensorSpec]) -> bool:
    """V1 reads instances along the first dimension, so every input needs a batch dimension."""
    return bool(inputs) and all(spec.shape[:1] == (-1,) for spec in inputs)


def _route_paths(
    app: Flask, examples: dict[str, Any], parameters: dict[str, str], access: Access | None
) -> dict[str, dict[str, Any]]:
    """One operation per route and method of the app's URL map."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        path = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found = known_operation(rule.endpoint, examples)
            # Only flaskserve's own POST routes refuse form and text bodies (415).
            checks_body = found is not None and method == "POST"
            if found is None:
                found = operation(
                    "Application", _summary(app, rule.endpoint), {"200": {"description": "OK."}}
                )
            _secure(found, access, rule.endpoint, rule.rule)
            found["responses"] = _guarded(found["responses"], checks_body)
            found["operationId"] = _operation_id(method.lower(), path)
            declared = _path_parameters(path, parameters) + found.pop("parameters", [])
            if declared:
                found["parameters"] = declared
            paths.setdefault(path, {})[method.lower()] = found
    return paths


def _model_paths(
    name: str, key: str, inputs: list[TensorSpec], outputs: list[TensorSpec], version: str
) -> dict[str, dict[str, Any]]:
    """The concrete paths of one model, with its own schemas and a working example."""
    example = example_response(name, version, outputs)
    paths = {
        f"/v2/models/{name}/infer": {
            "post": operation(
                f"Model {name}",
                f"Inference on {name}",
                _guarded(
                    {"200": answer("Outputs.", ref(f"{key}.InferResponse"), example), **ERRORS},
                    True,
                ),
                operationId=_operation_id("post", f"model {name} infer"),
                requestBody={
                    "required": True,
                    "content": json_content(
                        ref(f"{key}.InferRequest"), {"example": example_request(inputs)}
                    ),
                },
            )
        }
    }
    if _batchable(inputs):
        paths[f"/v1/models/{name}:predict"] = {
            "post": operation(
                f"Model {name}",
                f"V1 predict on {name}",
                _guarded({"200": answer("Predictions.", ref("V1Response")), **ERRORS}, True),
                operationId=_operation_id("post", f"model {name} v1 predict"),
                requestBody={
                    "required": True,
                    "content": json_content(
                        ref("V1Request"), {"example": example_instances(inputs)}
                    ),
                },
            )
        }
    return paths


#: The order of the groups Swagger UI shows (each model's own group first); a tag not named here
#: follows them in the order its routes appear.
_TAG_ORDER = ("V2", "V2 statistics", "V2 repository", "V1", "OpenAI", "SageMaker", "Playground",
              "Operations", "Application")


def _tags(paths: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    found = [op["tags"][0] for item in paths.values() for op in item.values() if op.get("tags")]
    models = sorted({tag for tag in found if tag.startswith("Model ")})
    rest = [tag for tag in dict.fromkeys(found) if tag not in _TAG_ORDER and tag not in models]
    ordered = models + [tag for tag in _TAG_ORDER if tag in found] + rest
    return [{"name": tag} for tag in ordered]


def build_document(
    app: Flask, dataplane: DataPlane, access: Access | None = None
) -> dict[str, Any]:
    """The document; `access` (given under `--auth`) tells which routes need an API key."""
    entries = dataplane.repository.entries()
    models = [(entry.name, *signature(entry)[:2]) for entry in entries]
    versions = {e.name: e.default.version if e.default is not None else "" for e in entries}
    examples: dict[str, Any] = {}
    if len(models) == 1 and models[0][1]:
        name, inputs, _ = models[0]
        examples["sagemaker"] = {name: example_request(inputs)}

    paths = _route_paths(app, examples, _parameter_examples(models, versions), access)
    components = {**COMPONENTS, **GENERATION_SCHEMAS}
    for name, inputs, outputs in models:
        if not inputs or not outputs:
            continue
        key = "model." + _COMPONENT_NAME.sub("_", name)
        components.update(model_components(key, inputs, outputs))
        concrete = _model_paths(name, key, inputs, outputs, versions.get(name) or "1")
        for item in concrete.values():
            for found in item.values():
                _secure(found, access, "v2.infer", "")
                found["responses"] = dict(sorted(found["responses"].items()))
        paths.update(concrete)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "flaskserve",
            "version": __version__,
            "description": "Open Inference Protocol V2 (with the repository and binary tensor "
            "extensions), KServe V1, SageMaker and OpenAI-compatible embeddings routes over the "
            "same models, plus the playground and operations routes. Per-model paths carry each "
            "model's signature.\n\nEvery route refuses requests from pages on other origins "
            "(403) and, on a server bound to loopback, Host names it does not answer (421); "
            "flaskserve's POST routes refuse the body types an HTML form can send (415). "
            "Origins in --cors-origins get CORS answers: an OPTIONS preflight with "
            "Access-Control-Request-Method is answered 204 with the allowed methods and "
            "headers, and every response names the origin in Access-Control-Allow-Origin."
            "\n\nA server run with --auth needs an API key on every route but health, "
            "readiness, GET /v2 and these pages: use Authorize (Bearer or X-API-Key).",
        },
        "tags": _tags(paths),
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }
    if access is not None:
        document["security"] = _KEYED
    return document
