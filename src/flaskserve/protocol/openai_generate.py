"""OpenAI's text generation: `POST /v1/chat/completions` and `POST /v1/completions`.

Every generative model (`Model.generative`: the transformers runtime, a Python model whose
`predict` yields) answers both, whole (`stream: false`) or as server-sent events (`stream:
true`: one `data: {chunk}` per piece of text as the model makes it, then `data: [DONE]`; with
`stream_options.include_usage` a last chunk carries the usage). The official `openai` client
reads both unchanged.

The request goes through the service gate like every inference route (key and model scope, rate
limit, admission: a refusal is a status before the stream starts, never a cut stream); the
generation runs through `core.generation.open_stream`, whose steps leave the tokens sent in the
request's context for metering. A client that goes away mid-stream closes the response's
iterator: the generation is cancelled and its place in the batch freed at once.

Errors have OpenAI's shape (`protocol.openai.error_body`); one that happens inside the model after
the stream started is sent as a last `data: {"error": ...}` event, which the client raises.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from flask import Blueprint, Response, request, stream_with_context

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import FlaskServeError, ModelNotFound
from flaskserve.core.generation import close_stream, first_event, open_stream, rest_of
from flaskserve.core.model import GenerationRequest, TextEvent, TextStream
from flaskserve.core.sampling import SETTINGS, InvalidSetting, sampling
from flaskserve.core.wakeup import NOTHING_YET
from flaskserve.protocol.http_context import http_context
from flaskserve.protocol.openai import OpenAIError, error_body, request_body, reshape_errors
from flaskserve.protocol.route_policy import inference_route
from flaskserve.protocol.v2 import json_response

#: Headers of a stream: no cache and no proxy buffering, so each token reaches the client.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: Both routes run a generation of the model named in the JSON body.
generation_route = inference_route("openai", generates=True, model_in="body")


def create_blueprint(dataplane: DataPlane) -> Blueprint:
    bp = Blueprint("openai_generate", __name__, url_prefix="/v1")

    @bp.post("/chat/completions")
    @generation_route
    def chat_completions() -> Response:
        """Continue a chat with a generative model (OpenAI's chat completions API)."""
        return _serve(dataplane, request_body(request), chat=True)

    @bp.post("/completions")
    @generation_route
    def completions() -> Response:
        """Continue a prompt with a generative model (OpenAI's legacy completions API)."""
        return _serve(dataplane, request_body(request), chat=False)

    @bp.errorhandler(OpenAIError)
    def openai_error(exc: OpenAIError) -> Response:
        body = error_body(exc.message, exc.status_code, exc.param, exc.code)
        return json_response(body, exc.status_code)

    bp.after_request(reshape_errors)
    return bp


def _serve(dataplane: DataPlane, body: Any, chat: bool) -> Response:
    name, wanted = parse_request(body, chat)
    context = http_context()
    try:
        _, stream = open_stream(dataplane, name, None, wanted, context)
    except ModelNotFound as exc:
        raise OpenAIError(exc.message, 404, "model", "model_not_found") from None
    first = first_event(stream)
    completion_id = ("chatcmpl-" if chat else "cmpl-") + context.request_id
    reply = _Reply(completion_id, name, chat)
    if not body.get("stream"):
        return json_response(reply.whole(first, stream))
    options = body.get("stream_options") or {}
    usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    return Response(
        stream_with_context(reply.chunks(first, stream, usage)),
        mimetype="text/event-stream",
        headers=SSE_HEADERS,
    )


class _Reply:
    """Builds OpenAI's answer objects for one completion."""

    def __init__(self, completion_id: str, model: str, chat: bool) -> None:
        self.id = completion_id
        self.model = model
        self.chat = chat
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def whole(self, first: TextEvent, stream: TextStream) -> dict[str, Any]:
        text, last = rest_of(first, stream)
        choice: dict[str, Any] = {"index": 0, "finish_reason": last.finish_reason or "stop"}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = None
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_of(last),
        }

    def chunks(self, first: TextEvent, stream: TextStream, usage: bool) -> Iterator[bytes]:
        """The SSE body: each event's text as one chunk, sent as it is made."""
        last = first
        try:
            if self.chat:
                yield self._chunk({"role": "assistant", "content": ""}, None, usage)
            event: TextEvent | None = first
            while event is not None:
                if event is NOTHING_YET:  # the engine waits for the next token, not a thread
                    yield b""
                    event = next(stream, None)
                    continue
                last = event
                if event.text:
                    yield self._chunk(event.text, None, usage)
                if event.finish_reason is not None:
                    yield self._chunk(None, event.finish_reason, usage)
                    break
                event = next(stream, None)
        except FlaskServeError as exc:
            yield _sse(error_body(exc.client_message(self.id), exc.status_code))
            return
        finally:
            close_stream(stream)
        if usage:
            yield _sse(self._frame([], usage_of(last)))
        yield b"data: [DONE]\n\n"

    def _chunk(self, piece: Any, finish_reason: str | None, usage: bool) -> bytes:
        if self.chat:
            if isinstance(piece, dict):
                delta = piece
            else:
                delta = {} if piece is None else {"content": piece}
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": piece or ""}
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        frame = self._frame([choice], None)
        if not usage:
            del frame["usage"]
        return _sse(frame)

    def _frame(self, choices: list[dict[str, Any]], usage: Any) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }


def usage_of(event: TextEvent) -> dict[str, int]:
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.prompt_tokens + event.completion_tokens,
    }


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def parse_request(body: Any, chat: bool) -> tuple[str, GenerationRequest]:
    """The model named and the generation asked for, or an `OpenAIError` naming the field."""
    route = "chat completions" if chat else "completions"
    if not isinstance(body, dict):
        raise OpenAIError(f'a {route} request is a JSON object {{"model": ..., ...}}')
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise OpenAIError(
            "'model' must name a served model (GET /v1/models lists them)", 400, "model"
        )
    if body.get("n", 1) != 1:
        raise OpenAIError("this server makes one choice per request: leave 'n' out or 1", 400, "n")
    if not isinstance(body.get("stream", False), bool):
        raise OpenAIError("'stream' must be true or false", 400, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise OpenAIError("'stream_options' must be an object", 400, "stream_options")
    settings = {key: body.get(key) for key in SETTINGS}
    settings["max_tokens"] = body.get("max_completion_tokens", body.get("max_tokens"))
    try:
        fields = sampling(settings)
    except InvalidSetting as exc:
        raise OpenAIError(exc.message, 400, exc.param) from None
    if chat:
        return name, GenerationRequest(messages=_messages(body.get("messages")), **fields)
    return name, GenerationRequest(prompt=_prompt(body.get("prompt")), **fields)


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise OpenAIError(
            "'prompt' must be a string (or a list holding one string); this server takes text, "
            "not token ids, and one prompt per request",
            400,
            "prompt",
        )
    return value


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise OpenAIError(
            "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...}",
            400,
            "messages",
        )
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIError(
                f"messages[{index}] must be an object with a string 'role'", 400, "messages"
            )
        messages.append({"role": message["role"], "content": _content(message, index)})
    return tuple(messages)


def _content(message: Mapping[str, Any], index: int) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise OpenAIError(
        f"messages[{index}].content must be a string or a list of text parts (this server "
        "reads text only)",
        400,
        "messages",
    )
