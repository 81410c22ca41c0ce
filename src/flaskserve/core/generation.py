"""Generations, protocol-neutral: start one through the data plane's steps, cut it at `stop`
strings, wrap a plain iterator of text pieces as a generative model.

Every front door that streams (OpenAI's chat and completions, the V2 generate extension, gRPC
`ModelStreamInfer`) calls `open_stream`, which runs the data plane's steps before the model is
asked (limits, usage) and after the stream ended, read to its end or closed by a client that
went away; the token counts of what was sent are left in the request's `InferenceContext`, so
a stream cut short is billed for what it got.

A refusal (unknown model, a model that does not generate, a prompt too long) is raised by
`open_stream` itself, before the first byte of a response: nothing is refused mid-stream.

Every wrapper here passes `wakeup.NOTHING_YET` on untouched: a stream driven by a waker yields it
instead of blocking (`core.wakeup`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from flaskserve.core import observers
from flaskserve.core.context import InferenceContext
from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import InvalidInput, ModelFailed
from flaskserve.core.model import GenerationRequest, Model, TensorSpec, TextEvent, TextStream
from flaskserve.core.wakeup import NOTHING_YET

#: The V2 signature of every generative model: one prompt in, the whole text out, as the
#: generate extension and `tritonclient` name them.
TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"


def open_stream(
    dataplane: DataPlane,
    name: str,
    version: str | None,
    request: GenerationRequest,
    context: InferenceContext,
) -> tuple[Model, TextStream]:
    """Start a generation on model `name`; the stream's consumer reads it or closes it."""
    prompt = request.prompt if request.prompt is not None else ""
    inputs = {TEXT_INPUT: np.array([prompt.encode("utf-8", "surrogatepass")], dtype=object)}
    for step in dataplane.steps:
        step.before(context, name, inputs)
    model: Model | None = None
    try:
        model = dataplane.repository.get(name, version)
        if not model.generative:
            raise InvalidInput(
                f"model {name!r} does not generate text; call it at /v2/models/{name}/infer"
            )
        stream = model.generate(request)
    except BaseException:
        for step in dataplane.steps:
            step.after(context, None, inputs, 0.0)
        raise
    return model, _accounted(model, stream, dataplane, context, inputs)


def _accounted(
    model: Model,
    stream: TextStream,
    dataplane: DataPlane,
    context: InferenceContext,
    inputs: dict[str, np.ndarray],
) -> Iterator[TextEvent]:
    started = time.perf_counter()
    first: float | None = None  # monotonic time of the first token
    try:
        for event in stream:
            if event is NOTHING_YET:
                yield event
                continue
            if first is None and event.completion_tokens:
                first = time.monotonic()
            context.prompt_tokens = event.prompt_tokens
            context.completion_tokens = event.completion_tokens
            yield event
    except GeneratorExit:
        raise
    except Exception as exc:
        raise ModelFailed(model.name, model.version, exc) from exc
    finally:
        close_stream(stream)  # a client that left: stop the generation, free its batch place
        ended = time.monotonic()
        seconds = time.perf_counter() - started
        for step in dataplane.steps:
            step.after(context, model, inputs, seconds)
        made = context.completion_tokens
        observers.current().generated(
            model.name,
            model.version,
            None if first is None else first - context.arrived,
            None if first is None or made < 2 else (ended - first) / (made - 1),
            context.prompt_tokens,
            made,
        )


def until_stop(stream: TextStream, stop: Iterable[str]) -> Iterator[TextEvent]:
    """`stream` cut before the first `stop` string, ending with finish reason "stop". Text that
    could be the start of a stop string is held back until the next event says it is not."""
    stops = [s for s in stop if s]
    if not stops:
        yield from stream
        return
    hold = max(len(s) for s in stops) - 1
    pending = ""
    try:
        for event in stream:
            if event is NOTHING_YET:
                yield event
                continue
            pending += event.text
            cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                yield TextEvent(
                    pending[:cut], event.prompt_tokens, event.completion_tokens, "stop"
                )
                return
            if event.finish_reason is not None:
                yield TextEvent(
                    pending, event.prompt_tokens, event.completion_tokens, event.finish_reason
                )
                return
            ready = len(pending) - hold
            text, pending = (pending[:ready], pending[ready:]) if ready > 0 else ("", pending)
            yield TextEvent(text, event.prompt_tokens, event.completion_tokens)
    finally:
        close_stream(stream)


def close_stream(stream: Iterable[Any]) -> None:
    """Close a stream its reader leaves (a client that went away, a refusal after the first
    event): a generator's `finally` stops the generation and frees its place in the batch; a
    stream without `close` holds nothing to free."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def first_event(stream: TextStream) -> TextEvent:
    """The first event of a stream, read before a door answers anything, so that a failure to
    start is still a plain error status, never a cut stream; the stream is closed if it fails."""
    try:
        return next(stream)
    except BaseException:
        close_stream(stream)
        raise


def rest_of(first: TextEvent, stream: TextStream) -> tuple[str, TextEvent]:
    """The whole text of a stream whose `first` event was read already (a door reads it to
    refuse before it answers anything) and its last event; the stream is closed either way."""
    parts, last = [first.text], first
    try:
        for event in stream:
            parts.append(event.text)
            last = event
    finally:
        close_stream(stream)
    return "".join(parts), last


def collect(stream: TextStream) -> tuple[str, TextEvent]:
    """Read a stream to its end: the whole text and its last event."""
    parts: list[str] = []
    last = TextEvent("", 0, 0, "stop")
    for event in stream:
        parts.append(event.text)
        last = event
    return "".join(parts), last


def prompt_of(request: GenerationRequest) -> str:
    """The text of a request for a model without a chat template: each message on its line."""
    if request.messages is None:
        return request.prompt or ""
    lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in request.messages]
    return "\n".join(lines) + "\nassistant:"


def pieces_stream(
    pieces: Iterable[Any], request: GenerationRequest, prompt_tokens: int
) -> Iterator[TextEvent]:
    """A stream of the text pieces a Python model yields, one piece counted as one token,
    ended after `request.max_tokens` pieces ("length") or when the pieces run out ("stop")."""
    iterator = iter(pieces)
    made = 0
    try:
        yield TextEvent("", prompt_tokens, 0)
        for piece in iterator:
            made += 1
            text = piece.decode("utf-8") if isinstance(piece, bytes) else str(piece)
            if request.max_tokens is not None and made >= request.max_tokens:
                yield TextEvent(text, prompt_tokens, made, "length")
                return
            yield TextEvent(text, prompt_tokens, made)
        yield TextEvent("", prompt_tokens, made, "stop")
    finally:
        close_stream(iterator)


def generative_model(
    name: str,
    version: str,
    generate: Callable[[GenerationRequest], TextStream],
    platform: str,
    **fields: Any,
) -> Model:
    """A `Model` that streams with `generate` (stop strings applied here, for every runtime)
    and answers V2's `infer` with the whole text: `text_input` BYTES [1] -> `text_output`."""

    def generate_with_stop(request: GenerationRequest) -> TextStream:
        stream = generate(request)
        return until_stop(stream, request.stop) if request.stop else stream

    def predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = []
        for value in arrays[TEXT_INPUT].flat:
            prompt = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            text, _ = collect(generate_with_stop(GenerationRequest(prompt=prompt)))
            texts.append(text.encode("utf-8"))
        out = np.empty(len(texts), dtype=object)
        out[:] = texts
        return {TEXT_OUTPUT: out}

    return Model(
        name=name,
        version=version,
        inputs=[TensorSpec(TEXT_INPUT, "BYTES", [-1])],
        outputs=[TensorSpec(TEXT_OUTPUT, "BYTES", [-1])],
        predict_fn=predict,
        platform=platform,
        generate_fn=generate_with_stop,
        **fields,
    )
