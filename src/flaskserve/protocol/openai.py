"""OpenAI-compatible routes: `POST /v1/embeddings` and `GET /v1/models`.

Every model whose signature is text in, one vector out (one BYTES input of shape [-1], one float
output of shape [-1, D]) answers OpenAI's embeddings API, so the official `openai` client and the
tools built on it call it unchanged. Which library runs the model does not matter here: the
signature decides, and the request runs through the same `DataPlane.infer` as V2, so batching,
limits, metering and metrics apply as they do there.

`usage.prompt_tokens` comes from the model's own tokenizer where its runtime offers one
(`Model.count_tokens`); a model without one (a Python model) reports whitespace-separated words.

Errors on these routes have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
which the client's exceptions read. That includes answers rendered elsewhere as `{"error": "..."}`
(the service gate's 401/403/429/503, 413 for an oversized body): they are reshaped on the way out.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from flask import Blueprint, Request, Response, request
from werkzeug.exceptions import HTTPException

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.declared import declare
from flaskserve.core.errors import FlaskServeError, InvalidInput, ModelNotFound, RequestTooLarge
from flaskserve.core.model import Model, TensorSpec
from flaskserve.core.request import InferenceRequest
from flaskserve.protocol.codec import dumps, loads
from flaskserve.protocol.http_context import UNPARSED, http_context, state_of
from flaskserve.protocol.route_policy import inference_route
from flaskserve.protocol.v2 import json_response

OWNER = "flaskserve"
ENCODINGS = ("float", "base64")
FLOAT_OUTPUTS = ("FP16", "FP32", "FP64")
#: OpenAI's error `type` per HTTP status; anything else is a client error or a server error.
ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


class OpenAIError(FlaskServeError):
    """A refusal that names the request field (`param`) it is about, as OpenAI's errors do."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.param = param
        self.code = code


def request_body(req: Request) -> Any:
    """The JSON body of `req`, parsed once per request (kept in its state, so the gate, the
    metrics and the route parse it once); a 400 when it is not JSON."""
    state = state_of(req.environ)
    if state.body is UNPARSED:
        state.body = loads(req.get_data())
    return state.body


def requested_model(req: Request) -> str | None:
    """The body's `model`, read exactly as the route reads it; None when the body has none (or
    is no JSON object, or is over the size limit), which the route then refuses."""
    try:
        body = request_body(req)
    except (InvalidInput, HTTPException):
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def parsed_model(req: Request) -> str | None:
    """The body's `model` when something already parsed the body, without reading it: what the
    metrics may look at, since a request refused before its body must not have it read."""
    body = state_of(req.environ).body
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def is_embedding_model(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Text in, one vector out: the signature the embeddings route can serve."""
    return (
        len(inputs) == 1
        and inputs[0].datatype == "BYTES"
        and inputs[0].shape == (-1,)
        and len(outputs) == 1
        and outputs[0].datatype in FLOAT_OUTPUTS
        and len(outputs[0].shape) == 2
        and outputs[0].shape[0] == -1
    )


def model_object(name: str, model: Model | None) -> dict[str, Any]:
    """OpenAI's model object; `created` (the load time) only for a model that is loaded."""
    card: dict[str, Any] = {"id": name, "object": "model", "owned_by": OWNER}
    if model is not None:
        card["created"] = int(model.loaded_at)
    return card


def error_body(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    if status >= 500:
        kind = "server_error"
    else:
        kind = ERROR_TYPES.get(status, "invalid_request_error")
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code if code is not None else ERROR_CODES.get(status),
        }
    }


def create_blueprint(dataplane: DataPlane) -> Blueprint:
    bp = Blueprint("openai", __name__, url_prefix="/v1")
    repository = dataplane.repository

    @bp.post("/embeddings")
    @inference_route("openai", model_in="body")
    def embeddings() -> Response:
        """Embed text with an embedding model (OpenAI's embeddings API)."""
        return json_response(create_embeddings(dataplane, request_body(request)))

    @bp.get("/models")
    def list_models() -> Response:
        """The models ready to serve, as OpenAI's model list."""
        data = [
            model_object(entry.name, entry.default)
            for entry in repository.entries()
            if entry.default is not None
        ]
        return json_response({"object": "list", "data": data})

    @bp.errorhandler(OpenAIError)
    def openai_error(exc: OpenAIError) -> Response:
        """The route's own refusals, naming the field; every other error is rendered by the
        app's one handler (headers, logging) and reshaped below."""
        body = error_body(exc.message, exc.status_code, exc.param, exc.code)
        return json_response(body, exc.status_code)

    bp.after_request(reshape_errors)
    return bp


def reshape_errors(response: Response) -> Response:
    """`{"error": "..."}` answers from the app's handlers and the service gate, in OpenAI's
    shape; their status and headers (Retry-After, WWW-Authenticate) stay as they are. Every
    OpenAI blueprint registers it."""
    if response.status_code < 400 or response.mimetype != "application/json":
        return response
    try:
        body = orjson.loads(response.get_data())
    except orjson.JSONDecodeError:
        return response
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        response.set_data(dumps(error_body(body["error"], response.status_code)))
    return response


def create_embeddings(dataplane: DataPlane, body: Any) -> dict[str, Any]:
    """Run an OpenAI embeddings request (a parsed JSON body) and build OpenAI's answer."""
    if not isinstance(body, dict):
        raise OpenAIError('an embeddings request is a JSON object {"model": ..., "input": ...}')
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise OpenAIError(
            "'model' must name a served model (GET /v1/models lists them)", 400, "model"
        )
    try:  # an unknown model is 404 whatever the rest of the body says, as on every door
        model = dataplane.lookup(name)
    except ModelNotFound as exc:
        raise OpenAIError(exc.message, 404, "model", "model_not_found") from None
    texts = _texts(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise OpenAIError(
            f"'encoding_format' must be 'float' or 'base64', not {encoding!r}",
            400,
            "encoding_format",
        )
    if not is_embedding_model(model.inputs, model.outputs):
        raise OpenAIError(
            f"model {name!r} is not an embedding model (text in, one vector out): it takes "
            f"{_describe(model.inputs)} and gives {_describe(model.outputs)}; call it at "
            f"/v2/models/{name}/infer",
            400,
            "model",
        )
    dimensions = body.get("dimensions")
    _check_dimensions(dimensions, model.outputs[0].shape[1])
    spec = model.inputs[0]
    try:  # before a text is encoded or tokenised
        dataplane.check(model, [declare(spec.name, "BYTES", [len(texts)])], None)
    except RequestTooLarge as exc:
        raise OpenAIError(exc.message, exc.status_code, "input") from None
    array = np.empty(len(texts), dtype=object)
    array[:] = [text.encode("utf-8", "surrogatepass") for text in texts]
    inputs, datatypes = {spec.name: array}, {spec.name: "BYTES"}
    model, outputs = dataplane.infer(
        InferenceRequest(model, inputs, datatypes, None, http_context(), checked=True)
    )
    vectors = np.ascontiguousarray(outputs[model.outputs[0].name], dtype="<f4")
    _check_dimensions(dimensions, vectors.shape[1])
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encode(vector, encoding)}
            for index, vector in enumerate(vectors)
        ],
        "model": name,
        "usage": {"prompt_tokens": (tokens := _count_tokens(model, texts)), "total_tokens": tokens},
    }


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise OpenAIError("'input' must be a string or a non-empty list of strings", 400, "input")
    for index, item in enumerate(value):
        if isinstance(item, str):
            continue
        if isinstance(item, int | list) and not isinstance(item, bool):
            raise OpenAIError(
                "'input' holds token ids; this server takes text only (a string or a list of "
                "strings), as it tokenises with the model's own tokenizer",
                400,
                "input",
            )
        raise OpenAIError(
            f"input[{index}] must be a string, not {type(item).__name__}", 400, "input"
        )
    return value


def _check_dimensions(value: Any, size: int) -> None:
    """`dimensions` asks OpenAI's models to shorten their vectors; a model here gives the size it
    was trained for, so only that size (or no `dimensions`) is accepted. A size the signature
    leaves open (-1) is checked once the vectors are there."""
    if value is None or size == -1:
        return
    if type(value) is not int or value < 1:
        raise OpenAIError("'dimensions' must be a positive integer", 400, "dimensions")
    if value != size:
        raise OpenAIError(
            f"this model gives vectors of {size} numbers and cannot shorten them; leave "
            f"'dimensions' out or set it to {size}",
            400,
            "dimensions",
        )


def _encode(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(vector.tobytes()).decode("ascii")
    return vector


def _count_tokens(model: Model, texts: list[str]) -> int:
    if model.count_tokens is not None:
        return int(model.count_tokens(texts))
    return sum(len(text.split()) for text in texts)


def _describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs) or "nothing"
