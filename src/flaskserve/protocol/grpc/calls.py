"""What every RPC does the same way, unary or a request of a `ModelStreamInfer` stream: read the
call's metadata, make the request's `InferenceContext` (its id, the client's deadline), and turn
a failure into the sentence the client is told.

A `FlaskServeError` is told as its client message (a model's own exception is logged with the
request id, which the message names); anything else is logged with its traceback and told as
one sentence, never the traceback. The unary RPCs answer that with a status code
(`servicer.STATUS_CODES`), a stream with a response's `error_message`, as Triton does.
"""

from __future__ import annotations

import logging
import time

import grpc

from flaskserve.core.context import InferenceContext, request_id_from
from flaskserve.core.errors import FlaskServeError, ModelFailed

log = logging.getLogger("flaskserve.grpc")

PROTOCOL = "grpc"
REQUEST_ID_METADATA = "x-request-id"
INTERNAL_MESSAGE = "internal server error; the server log has details"
#: Seconds left beyond which a call counts as having no deadline: gRPC reports a call sent
#: without one as about 9.2e18 seconds left, too long for any timed wait.
NO_DEADLINE = 365 * 24 * 3600.0


def metadata_of(context: grpc.ServicerContext) -> dict[str, str]:
    """The call's text metadata (binary `-bin` values are left out)."""
    return {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}


def inference_context(
    context: grpc.ServicerContext, metadata: dict[str, str], request_id: str = ""
) -> InferenceContext:
    """The `InferenceContext` of one request of the call: its id (`request_id`, else the
    call's `x-request-id`, else a new one) and the client's deadline."""
    given = request_id or metadata.get(REQUEST_ID_METADATA)
    return InferenceContext(PROTOCOL, request_id_from(given), deadline=_deadline(context))


def told(exc: Exception, rpc: str, request_id: str) -> tuple[int, str]:
    """The HTTP status of a failure and what the client is told of it; a model's exception
    and any error that is not a `FlaskServeError` are logged here."""
    if isinstance(exc, FlaskServeError):
        if isinstance(exc, ModelFailed):
            exc.log_to(log, request_id)
        return exc.status_code, exc.client_message(request_id)
    log.error("unhandled error in %s", rpc, exc_info=exc)
    return 500, INTERNAL_MESSAGE


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The client's deadline as a `time.monotonic()` value; None when it set none."""
    left = context.time_remaining()
    return None if left is None or left > NO_DEADLINE else time.monotonic() + left
