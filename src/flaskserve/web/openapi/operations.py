"""What the OpenAPI document says about each route flaskserve serves, keyed by Flask endpoint.

A route is documented by adding its endpoint to `OPERATIONS` (a plain operation object), or to
`EXAMPLE_OPERATIONS` when its operation shows examples built from the models being served. A
route that is in neither (an application's own) is still listed, summed up by its docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flaskserve.protocol.infer import HEADER_LENGTH
from flaskserve.protocol.sagemaker import TARGET_MODEL_HEADER
from flaskserve.web.openapi.generation import GENERATION_OPERATIONS
from flaskserve.web.openapi.responses import (
    ERROR,
    ERRORS,
    OPENAI_ERROR,
    OPENAI_ERRORS,
    answer,
    browser_errors,
    json_content,
    operation,
    ref,
    text,
)

_BINARY_HEADER = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "description": "Length of the JSON part of a binary-extension request.",
    "schema": {"type": "integer", "minimum": 1},
}

_INFER_REQUEST_BODY = {
    "required": True,
    "content": {
        **json_content(ref("InferRequest")),
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

_INFER_RESPONSE = {
    "description": "Outputs; binary ones follow the JSON header when asked for.",
    "content": {
        **json_content(ref("InferResponse")),
        "application/octet-stream": {
            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
        },
    },
}

_CONTROL_OFF = answer(
    "Model control is off (serve with --model-control, or --auth and an admin key), or the "
    "request came from a page on another origin.",
    ERROR,
)

_MODEL_READY = {
    "200": answer("Ready.", ref("ModelReady"), {"name": "digits", "ready": True}),
    "503": answer("Not ready.", ref("ModelReady"), {"name": "digits", "ready": False}),
    "404": ERRORS["404"],
}

_DURATION = {
    "type": "object",
    "required": ["count", "ns"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "ns": {"type": "integer", "minimum": 0, "description": "Total nanoseconds."},
    },
}
_MODEL_STATISTICS = {
    "type": "object",
    "required": ["model_stats"],
    "properties": {
        "model_stats": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "version", "inference_stats", "batch_stats"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "last_inference": {
                        "type": "integer",
                        "description": "Milliseconds since the epoch; 0 when never.",
                    },
                    "inference_count": {"type": "integer", "description": "Rows inferred."},
                    "execution_count": {"type": "integer", "description": "Predict calls."},
                    "inference_stats": {
                        "type": "object",
                        "additionalProperties": _DURATION,
                        "description": "success, fail, queue, compute_input, compute_infer, "
                        "compute_output, cache_hit, cache_miss.",
                    },
                    "batch_stats": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "batch_size": {"type": "integer", "minimum": 0},
                                "compute_input": _DURATION,
                                "compute_infer": _DURATION,
                                "compute_output": _DURATION,
                            },
                        },
                    },
                },
            },
        }
    },
}

_A_FILE = {"200": {"description": "The file."}, "404": {"description": "No such file."}}

#: Flask endpoint -> its OpenAPI operation (copied per document: callers may add keys to it).
OPERATIONS: dict[str, dict[str, Any]] = {
    # Open Inference Protocol V2
    "v2.server_metadata": operation(
        "V2",
        "Server metadata",
        {"200": answer("Name, version, extensions.", ref("ServerMetadata"))},
    ),
    "v2.live": operation("V2", "Liveness", {"200": answer("Alive.", ref("Live"), {"live": True})}),
    "v2.ready": operation(
        "V2",
        "Readiness of the whole server",
        {
            "200": answer("Every model is ready.", ref("Ready"), {"ready": True}),
            "503": answer("Some model is not ready.", ref("Ready"), {"ready": False}),
        },
    ),
    "v2.model_metadata": operation(
        "V2",
        "Model metadata: versions, platform, signature",
        {"200": answer("Metadata.", ref("ModelMetadata")), "404": ERRORS["404"]},
    ),
    "v2.model_ready": operation("V2", "Model readiness", _MODEL_READY),
    "v2.infer": operation(
        "V2",
        "Inference (JSON or binary tensors)",
        {"200": _INFER_RESPONSE, **ERRORS},
        requestBody=_INFER_REQUEST_BODY,
        parameters=[_BINARY_HEADER],
    ),
    # V2 statistics extension
    "v2.all_model_statistics": operation(
        "V2 statistics",
        "Statistics of every version of every model, summed over the workers (admin key)",
        {"200": answer("Per model version counts and times.", _MODEL_STATISTICS)},
    ),
    "v2.model_statistics": operation(
        "V2 statistics",
        "Statistics of a model's versions (or one version), summed over the workers",
        {
            "200": answer("Per model version counts and times.", _MODEL_STATISTICS),
            "404": ERRORS["404"],
        },
    ),
    # V2 repository extension
    "v2.repository_index": operation(
        "V2 repository",
        "Every model version with its state",
        {"200": answer("The index.", ref("RepositoryIndex"))},
        requestBody={
            "required": False,
            "content": json_content(ref("RepositoryIndexRequest"), {"all": {}}),
        },
    ),
    "v2.load_model": operation(
        "V2 repository",
        "(Re)load a model from the repository, in every worker",
        {
            "200": answer("Loaded.", {"type": "object"}),
            "400": answer("It failed to load; the reason says why.", ERROR),
            "403": _CONTROL_OFF,
            "404": ERRORS["404"],
        },
    ),
    "v2.unload_model": operation(
        "V2 repository",
        "Unload a model, in every worker",
        {
            "200": answer("Unloaded.", {"type": "object"}),
            "403": _CONTROL_OFF,
            "404": ERRORS["404"],
        },
    ),
    # KServe V1
    "v1.model_status": operation(
        "V1",
        "Model readiness (KServe V1), with OpenAI's model fields",
        {
            "200": answer("Ready.", ref("V1ModelStatus")),
            "503": answer("Not ready (no `created`).", ref("V1ModelStatus")),
            "404": ERRORS["404"],
        },
    ),
    "v1.predict": operation(
        "V1",
        "Predict (KServe V1 / TF-Serving)",
        {"200": answer("One prediction per instance.", ref("V1Response")), **ERRORS},
        requestBody={"required": True, "content": json_content(ref("V1Request"))},
    ),
    # OpenAI-compatible (errors in OpenAI's shape, the browser guards' included)
    "openai.embeddings": operation(
        "OpenAI",
        "Embeddings from a text-in, vector-out model (OpenAI's embeddings API)",
        {
            "200": answer("One vector per input, in input order.", ref("EmbeddingResponse")),
            **browser_errors(OPENAI_ERROR, checks_body=True),
            **OPENAI_ERRORS,
        },
        requestBody={
            "required": True,
            "content": json_content(ref("EmbeddingRequest")),
        },
    ),
    "openai.list_models": operation(
        "OpenAI",
        "The models ready to serve (OpenAI's model list)",
        {
            "200": answer("Loaded models.", ref("ModelList")),
            **browser_errors(OPENAI_ERROR, checks_body=False),
            "401": OPENAI_ERRORS["401"],
        },
    ),
    # SageMaker (`sagemaker.invocations` is in EXAMPLE_OPERATIONS)
    "sagemaker.ping": operation(
        "SageMaker",
        "SageMaker health check",
        {"200": answer("Ready.", ref("Ping")), "503": answer("Not ready.", ref("Ping"))},
    ),
    # Playground
    "home.index": operation(
        "Playground",
        "The models: an HTML page for browsers, JSON for Accept: application/json",
        {
            "200": {
                "description": "Models with state, versions and signature.",
                "content": {
                    "text/html": {"schema": {"type": "string"}},
                    **json_content(ref("ServerIndex")),
                },
            }
        },
    ),
    "home.model_page": operation(
        "Playground",
        "A model's playground page (drawing pad, text boxes or JSON editor)",
        {"200": text("HTML page.", "text/html"), "404": text("Unknown model.", "text/html")},
    ),
    "home.greet": operation(
        "Playground",
        "The classic Flask greeting: hello,<name>",
        {"200": text("Greeting.", "text/plain")},
    ),
    "static": operation(
        "Application",
        "Flask's own static folder (for files an application adds; flaskserve ships none)",
        _A_FILE,
    ),
    "home.static": operation(
        "Playground", "Playground assets (CSS, JavaScript), served by the package", _A_FILE
    ),
    # Operations
    "metrics.scrape": operation(
        "Operations",
        "Prometheus metrics of every worker (see docs/metrics.md)",
        {"200": text("Prometheus text exposition format.", "text/plain")},
    ),
    "docs.openapi": operation(
        "Operations", "This OpenAPI document", {"200": answer("OpenAPI 3.1.", {"type": "object"})}
    ),
    "docs.docs_page": operation(
        "Operations", "Interactive API docs (Swagger UI)", {"200": text("HTML page.", "text/html")}
    ),
    "home.dashboard": operation(
        "Operations",
        "Live dashboard of traffic and usage (an HTML page that polls /dashboard/data)",
        {"200": text("HTML page.", "text/html")},
    ),
    "dashboard.data": operation(
        "Operations",
        "The dashboard's data: each model's counters summed over the workers, and usage per "
        "key and minute (with --auth: an admin key sees every key, others only their own)",
        {
            "200": answer(
                "Cumulative counters (the page turns two polls into rates) and usage.",
                {
                    "type": "object",
                    "required": ["time", "latency_bounds", "models", "usage"],
                    "properties": {
                        "time": {"type": "integer", "description": "Server time, ms."},
                        "latency_bounds": {"type": "array", "items": {"type": "number"}},
                        "models": {"type": "object", "additionalProperties": {"type": "object"}},
                        "viewer": {"type": ["object", "null"]},
                        "usage": {"type": "object"},
                    },
                },
            )
        },
    ),
    **GENERATION_OPERATIONS,
}


def _invocations(examples: dict[str, Any]) -> dict[str, Any]:
    """SageMaker's one route takes any model's request: with one model served, its example."""
    return operation(
        "SageMaker",
        "SageMaker invocation: a V2 or V1 request, or CSV rows",
        {"200": answer("V2 or V1 response.", {"type": "object"}), **ERRORS},
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
                **json_content(
                    {"oneOf": [ref("InferRequest"), ref("V1Request")]}, examples.get("sagemaker")
                ),
                "text/csv": {"schema": {"type": "string"}},
            },
        },
    )


#: Flask endpoint -> builder of its operation from the examples of the served models.
EXAMPLE_OPERATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sagemaker.invocations": _invocations,
}


def known_operation(endpoint: str, examples: dict[str, Any]) -> dict[str, Any] | None:
    """A fresh operation object for `endpoint`, or None when flaskserve does not know it."""
    if endpoint in EXAMPLE_OPERATIONS:
        return EXAMPLE_OPERATIONS[endpoint](examples)
    static = OPERATIONS.get(endpoint)
    return None if static is None else dict(static)
