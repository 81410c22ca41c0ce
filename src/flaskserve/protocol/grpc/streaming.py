"""`ModelStreamInfer`: the V2 gRPC bidirectional stream, for streaming (decoupled) models.

Each `ModelInferRequest` on the stream is served in turn. A generative model gets its prompt
from the `text_input` BYTES input and its sampling settings from the request's `parameters`
(or from inputs of the same names, as TensorRT-LLM's clients send them): `max_tokens`,
`temperature`, `top_p`, `seed`, `stop`. It answers one `ModelStreamInferResponse` per piece of
text as the model makes it (output `text_output`, BYTES [1]); the last one carries the
parameters `triton_final_response: true`, `finish_reason`, `prompt_tokens` and
`completion_tokens`. Any other model answers with one response, as `ModelInfer` would.
`tritonclient.grpc`'s `start_stream` / `async_stream_infer` read these unchanged.

A refusal or failure of one request is a response with `error_message` (the stream goes on with
the next request), as Triton does. The gate's hooks (keys, model scope, rate limit,
metering) run for each request as for a `ModelInfer` call; a client that cancels the stream
closes the running generation, which frees its place in the model's batch. Each generation is
held to the stream limits (`--max-stream-bytes` of text, `--max-stream-seconds`): the piece
past one is not sent and the request ends with an error response that names it; a client that
stopped reading, and so holds the thread in a send, has its call cancelled (`stalls`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
import numpy as np

from flaskserve.core.context import InferenceContext
from flaskserve.core.errors import InvalidInput
from flaskserve.core.generation import TEXT_INPUT, TEXT_OUTPUT, close_stream, open_stream
from flaskserve.core.model import GenerationRequest, Model, TextEvent
from flaskserve.core.sampling import sampling
from flaskserve.core.signature import check_datatypes
from flaskserve.core.stream_limits import SECONDS_FLAG, StreamLimitReached, StreamLimits
from flaskserve.protocol.grpc import messages
from flaskserve.protocol.grpc.calls import inference_context, metadata_of, told
from flaskserve.protocol.grpc.stalls import SEND_GRACE_S, WATCHDOG, Sending
from flaskserve.protocol.grpc.tensors import declare_inputs, decode_request, encode_response

log = logging.getLogger("flaskserve.grpc")

RPC = "ModelStreamInfer"
#: The gate sees each request of a stream as one inference call.
HOOKS_RPC = "ModelInfer"


def stream_infer(
    servicer: Any, requests: Iterable[Any], context: grpc.ServicerContext
) -> Iterator[Any]:
    """Serve each request of the stream in turn (see the module docstring); each has the
    context a `ModelInfer` call would (its id from the request, else the call's)."""
    metadata = metadata_of(context)
    for request in requests:
        inference = inference_context(context, metadata, request.id)
        call = servicer.hooks(
            HOOKS_RPC, request.model_name or None, request.model_version or None,
            metadata, inference,
        )
        status, sent = 200, 0
        try:
            call.admit()
            limits = call.stream_limits
            for response in _serve(servicer, request, inference, limits, context.cancel):
                sent += response.ByteSize()
                yield response
        except Exception as exc:
            status, message = told(exc, RPC, inference.request_id)
            yield messages.ModelStreamInferResponse(error_message=message)
        finally:
            call.done(status, request.ByteSize(), sent)


def _serve(
    servicer: Any,
    request: Any,
    inference: InferenceContext,
    limits: StreamLimits,
    cancel: Callable[[], object],
) -> Iterator[Any]:
    """The responses to one request of the stream; a generation is held to `limits` (checked
    at each piece; a send stuck past the time limit cancels the call: `stalls`)."""
    name, version = request.model_name, request.model_version or None
    model = servicer.dataplane.lookup(name, version)
    if not model.generative:
        response = servicer.infer(model, version, request, inference)
        yield messages.ModelStreamInferResponse(infer_response=response)
        return
    wanted = generation_request(request, model)
    served, stream = open_stream(servicer.dataplane, name, version, wanted, inference)
    started = time.monotonic()
    cap, deadline, sent = limits.byte_cap, limits.deadline(started), 0

    def cancel_stuck() -> None:
        key = f" (key {inference.key_id!r})" if inference.key_id else ""
        log.warning(
            "stream of %s %s cancelled at %s: its client stopped reading (a send waited %gs "
            "past the limit), %d bytes of text sent%s",
            RPC, name, SECONDS_FLAG, SEND_GRACE_S, sent, key,
        )
        cancel()

    watched = Sending(deadline, cancel_stuck)
    if limits.max_seconds > 0:
        WATCHDOG.watch(watched)
    try:
        for event in stream:
            if event.text or event.finish_reason is not None:
                total, now = sent + len(event.text.encode("utf-8")), time.monotonic()
                if total > cap or now > deadline:
                    raise _stopped(limits, name, inference, sent, started, total > cap)
                sent, watched.since = total, now
                yield messages.ModelStreamInferResponse(
                    infer_response=_text_response(served, request.id, event)
                )
                watched.since = None
    finally:
        WATCHDOG.forget(watched)
        close_stream(stream)


def _stopped(
    limits: StreamLimits,
    model: str,
    inference: InferenceContext,
    sent: int,
    started: float,
    over_bytes: bool,
) -> StreamLimitReached:
    """The error of a generation stopped at a stream limit, logged as HTTP logs its own."""
    seconds = time.monotonic() - started
    error = limits.reached(sent, seconds, over_bytes)
    key = f" (key {inference.key_id!r})" if inference.key_id else ""
    log.warning(
        "stream of %s %s stopped at %s: %d bytes of text sent in %.1fs%s",
        RPC, model, error.flag, sent, seconds, key,
    )
    return error


def _text_response(model: Model, request_id: str, event: TextEvent) -> Any:
    text = np.empty(1, dtype=object)
    text[0] = event.text.encode("utf-8")
    # Raw contents, as ModelInfer answers: tritonclient reads them on every numpy version.
    response = encode_response(model, {TEXT_OUTPUT: text}, None, request_id)
    final = event.finish_reason is not None
    response.parameters["triton_final_response"].bool_param = final
    if final:
        response.parameters["finish_reason"].string_param = event.finish_reason or ""
        response.parameters["prompt_tokens"].int64_param = event.prompt_tokens
        response.parameters["completion_tokens"].int64_param = event.completion_tokens
    return response


def generation_request(request: Any, model: Model) -> GenerationRequest:
    """The prompt (input `text_input`) and sampling settings of a stream request for `model`;
    each input holds one value and the prompt has the datatype of `model`'s `text_input`, as
    `ModelInfer` would say, both checked on what the request declares before anything is
    decoded (the sampling inputs are not in the model's signature: the data plane's whole
    check does not apply)."""
    declared = declare_inputs(request)
    for tensor in declared:
        if math.prod(tensor.shape) > 1:
            raise InvalidInput(
                f"input {tensor.name!r} must hold one value, not shape {list(tensor.shape)}"
            )
    check_datatypes(model, {tensor.name: tensor.datatype for tensor in declared})
    decoded = decode_request(request, declared)
    if TEXT_INPUT not in decoded.inputs:
        raise InvalidInput(f"a generative model takes its prompt as the BYTES input {TEXT_INPUT!r}")
    settings: dict[str, Any] = {}
    for key, array in decoded.inputs.items():
        if key != TEXT_INPUT and np.size(array) == 1:
            settings[key] = array.reshape(-1)[0]
    settings.update(decoded.parameters)
    prompt = decoded.inputs[TEXT_INPUT].reshape(-1)
    if prompt.size != 1:
        raise InvalidInput(f"{TEXT_INPUT!r} must hold one prompt, not {prompt.size}")
    text = prompt[0].decode("utf-8") if isinstance(prompt[0], bytes) else str(prompt[0])
    return GenerationRequest(prompt=text, **sampling(settings))
