"""Per-request bookkeeping, from Flask hooks: request ids, inference metrics, log fields.

Every response carries `X-Request-ID` (the client's, when it sent a sensible one, else a fresh
one). Inference routes, whichever protocol they speak, are counted and timed here, once, so the
protocol blueprints stay about their wire format; a streamed response is timed until it is
closed (its last piece sent, or its client gone), not until its headers. The model name and
request id are left in the WSGI environ, where the access log middleware (`serving.AccessLog`)
reads them.
"""

from __future__ import annotations

import time

from flask import Flask, Response, request

from flaskserve.core.context import InferenceContext, new_request_id, request_id_from
from flaskserve.core.dataplane import DataPlane
from flaskserve.observability import metrics
from flaskserve.protocol import openai
from flaskserve.protocol.hook_chain import HookChain
from flaskserve.protocol.http_context import CONTEXT_KEY, PROTOCOL_OF_ENDPOINT, REQUEST_ID_KEY
from flaskserve.protocol.sagemaker import TARGET_MODEL_HEADER

__all__ = ["MODEL_KEY", "REQUEST_ID_KEY", "install", "new_request_id"]

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
#: WSGI environ key the access loggers read (beside `REQUEST_ID_KEY`).
MODEL_KEY = "flaskserve.model"
_STARTED_KEY = "flaskserve.started"
_PROTOCOL_KEY = "flaskserve.protocol"
_LABELS_KEY = "flaskserve.labels"


def install(app: Flask, dataplane: DataPlane, hooks: HookChain | None = None) -> None:
    """Register the hooks on `app` (or on `hooks`, which runs them as one hook of each kind);
    `dataplane` tells known model names and served versions."""
    repository = dataplane.repository
    target: Flask | HookChain = hooks if hooks is not None else app

    def model_label(name: str | None) -> tuple[str, str]:
        return metrics.model_labels(repository, name, (request.view_args or {}).get("version"))

    def start() -> None:
        environ = request.environ
        # not request.headers: built per request
        request_id = environ[REQUEST_ID_KEY] = request_id_from(environ.get(_REQUEST_ID_ENVIRON))
        protocol = PROTOCOL_OF_ENDPOINT.get(request.endpoint or "")
        if protocol is None:
            return
        environ[_PROTOCOL_KEY] = protocol
        environ[CONTEXT_KEY] = InferenceContext(protocol, request_id)
        environ[_STARTED_KEY] = time.perf_counter()
        name = _model_name(protocol, dataplane)
        environ[MODEL_KEY] = name
        labels = environ[_LABELS_KEY] = model_label(name)
        metrics.request_started(labels[0])

    def finish(response: Response) -> Response:
        environ = request.environ
        response.headers[REQUEST_ID_HEADER] = environ.get(REQUEST_ID_KEY) or new_request_id()
        protocol = environ.get(_PROTOCOL_KEY)
        if protocol is not None:
            model, version = environ[_LABELS_KEY]
            if protocol == "openai":  # its model is in the body, read (if at all) by now
                model, version = model_label(openai.parsed_model(request))
            started, status = environ[_STARTED_KEY], str(response.status_code)
            if response.is_streamed:  # it lasts until its last piece is sent (or it is cut)
                response.call_on_close(lambda: metrics.request_answered(
                    model, version, protocol, status, time.perf_counter() - started))
            else:
                elapsed = time.perf_counter() - started
                metrics.request_answered(model, version, protocol, status, elapsed)
        return response

    def end(_exc: BaseException | None) -> None:
        labels = request.environ.pop(_LABELS_KEY, None)
        if labels is not None:
            metrics.request_ended(labels[0])

    target.before_request(start)
    target.after_request(finish)
    target.teardown_request(end)


def _model_name(protocol: str, dataplane: DataPlane) -> str | None:
    if protocol == "openai":  # named in the body, which is not read before the key is checked
        return None
    if protocol != "sagemaker":
        return (request.view_args or {}).get("name")
    named = request.headers.get(TARGET_MODEL_HEADER)
    if named:
        return named
    entries = dataplane.repository.entries()
    return entries[0].name if len(entries) == 1 else None
