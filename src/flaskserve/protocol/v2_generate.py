"""KServe/Triton's generate extension: `POST /v2/models/{m}[/versions/{v}]/generate` and
`.../generate_stream` (server-sent events), for generative models.

Request (both routes): a JSON object with the prompt as `text_input` and sampling settings in
`parameters` (or beside `text_input`, as TensorRT-LLM's clients send them): `max_tokens`,
`temperature`, `top_p`, `seed`, `stop` (a string or a list; `stop_words` too).

    {"text_input": "Once upon a time", "parameters": {"max_tokens": 32, "temperature": 0}}

`generate` answers one object, `generate_stream` one `data: {...}` event per piece of text as
the model makes it; each has `model_name`, `model_version` and `text_output`, and the last one
also `finish_reason`, `prompt_tokens` and `completion_tokens` (flaskserve's additions). Errors are
V2's `{"error": "..."}` with a 4xx/5xx status before the stream starts; an error after that is a
last `data: {"error": "..."}` event, as the extension says.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, request, stream_with_context

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import FlaskServeError, InvalidInput
from flaskserve.core.generation import close_stream, first_event, open_stream, rest_of
from flaskserve.core.model import GenerationRequest, Model, TextEvent, TextStream
from flaskserve.core.sampling import SETTINGS, sampling
from flaskserve.core.wakeup import NOTHING_YET
from flaskserve.protocol.codec import loads
from flaskserve.protocol.http_context import http_context
from flaskserve.protocol.route_policy import inference_route
from flaskserve.protocol.v2 import json_response

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: The sampling settings a request may give (`stop_words`, TensorRT-LLM's name, for `stop`).
_SAMPLING = (*SETTINGS, "stop_words")


def create_blueprint(dataplane: DataPlane) -> Blueprint:
    bp = Blueprint("v2_generate", __name__, url_prefix="/v2/models")

    @bp.post("/<name>/generate")
    @bp.post("/<name>/versions/<version>/generate")
    @inference_route("v2", generates=True)
    def generate(name: str, version: str | None = None) -> Response:
        """Generate text with a generative model (KServe/Triton generate extension)."""
        model, first, stream = _start(dataplane, name, version)
        text, last = rest_of(first, stream)
        return json_response(_answer(model, text, last))

    @bp.post("/<name>/generate_stream")
    @bp.post("/<name>/versions/<version>/generate_stream")
    @inference_route("v2", generates=True)
    def generate_stream(name: str, version: str | None = None) -> Response:
        """Stream generated text as server-sent events (KServe/Triton generate extension)."""
        model, first, stream = _start(dataplane, name, version)
        return Response(
            stream_with_context(_events(model, first, stream)),
            mimetype="text/event-stream",
            headers=SSE_HEADERS,
        )

    return bp


def _start(
    dataplane: DataPlane, name: str, version: str | None
) -> tuple[Model, TextEvent, TextStream]:
    """Parse the request and start its generation; refusals raise before any response."""
    wanted = parse_request(loads(request.get_data()))
    model, stream = open_stream(dataplane, name, version, wanted, http_context())
    return model, first_event(stream), stream


def _events(model: Model, first: TextEvent, stream: TextStream) -> Iterator[bytes]:
    event: TextEvent | None = first
    try:
        while event is not None:
            if event is NOTHING_YET:  # the engine waits for the next token, not a thread
                yield b""
            elif event.text or event.finish_reason is not None:
                yield _sse(_answer(model, event.text, event))
            if event.finish_reason is not None:
                return
            event = next(stream, None)
    except FlaskServeError as exc:
        yield _sse({"error": exc.client_message(http_context().request_id)})
    finally:
        close_stream(stream)


def _answer(model: Model, text: str, event: TextEvent) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "text_output": text,
    }
    if event.finish_reason is not None:
        answer["finish_reason"] = event.finish_reason
        answer["prompt_tokens"] = event.prompt_tokens
        answer["completion_tokens"] = event.completion_tokens
    return answer


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def parse_request(body: Any) -> GenerationRequest:
    """The generation a generate-extension body asks for; `InvalidInput` names what to fix."""
    if not isinstance(body, dict):
        raise InvalidInput('a generate request is a JSON object {"text_input": "...", ...}')
    prompt = body.get("text_input")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidInput("'text_input' must be a string (the prompt)")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    settings: dict[str, Any] = {k: body[k] for k in _SAMPLING if k in body}
    settings.update({k: parameters[k] for k in _SAMPLING if k in parameters})
    settings.setdefault("stop", settings.get("stop_words"))
    return GenerationRequest(prompt=prompt, **sampling(settings))
