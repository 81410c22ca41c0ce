"""Per-request bookkeeping, from Flask hooks: request ids, inference metrics, log fields.

Every response carries `X-Request-ID` (the client's, when it sent a sensible one, else a fresh
one). Inference routes, whichever protocol they speak, are counted and timed here, once, so the
protocol blueprints stay about their wire format; a streamed response is timed until it is
closed (its last piece sent, or its client gone), not until its headers. The model name and
request id are left in the request's state (`protocol.http_context`), where the access log
middleware (`serving.access_log`) reads them.
"""

from __future__ import annotations

import time

from flask import Flask, Response, request

from flaskserve.core.context import new_request_id, request_id_from
from flaskserve.core.dataplane import DataPlane
from flaskserve.observability import metrics
from flaskserve.protocol import openai
from flaskserve.protocol.hook_chain import HookChain
from flaskserve.protocol.http_context import new_context, route, state_of
from flaskserve.protocol.route_policy import RoutePolicy
from flaskserve.protocol.sagemaker import TARGET_MODEL_HEADER

__all__ = ["install", "new_request_id"]

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"


def install(app: Flask, dataplane: DataPlane, hooks: HookChain | None = None) -> None:
    """Register the hooks on `app` (or on `hooks`, which runs them as one hook of each kind);
    `dataplane` tells known model names and served versions."""
    repository = dataplane.repository
    target: Flask | HookChain = hooks if hooks is not None else app

    def model_label(name: str | None) -> tuple[str, str]:
        return metrics.model_labels(repository, name, (request.view_args or {}).get("version"))

    def start() -> None:
        environ = request.environ
        state = state_of(environ)
        # not request.headers: built per request
        state.request_id = request_id_from(environ.get(_REQUEST_ID_ENVIRON))
        declared = route(state)
        if declared is None or declared.protocol is None:
            return
        new_context(state, declared.protocol)
        state.started = time.perf_counter()
        name = state.model = _model_name(declared, dataplane)
        labels = state.labels = model_label(name)
        metrics.request_started(labels[0])

    def finish(response: Response) -> Response:
        state = state_of(request.environ)
        response.headers[REQUEST_ID_HEADER] = state.request_id or new_request_id()
        declared = state.route
        if state.labels is not None and declared is not None and declared.protocol is not None:
            model, version = state.labels
            if declared.model_in == "body":  # read (if at all) by now
                model, version = model_label(openai.parsed_model(request))
            started, status = state.started, str(response.status_code)
            protocol = declared.protocol
            if response.is_streamed:  # it lasts until its last piece is sent (or it is cut)
                response.call_on_close(
                    lambda: metrics.request_answered(
                        model, version, protocol, status, time.perf_counter() - started
                    )
                )
            else:
                elapsed = time.perf_counter() - started
                metrics.request_answered(model, version, protocol, status, elapsed)
        return response

    def end(_exc: BaseException | None) -> None:
        state = state_of(request.environ)
        labels, state.labels = state.labels, None
        if labels is not None:
            metrics.request_ended(labels[0])

    target.before_request(start)
    target.after_request(finish)
    target.teardown_request(end)


def _model_name(declared: RoutePolicy, dataplane: DataPlane) -> str | None:
    if declared.model_in == "body":  # not read before the key is checked
        return None
    if declared.model_in == "url":
        return (request.view_args or {}).get("name")
    named = request.headers.get(TARGET_MODEL_HEADER)
    if named:
        return named
    entries = dataplane.repository.entries()
    return entries[0].name if len(entries) == 1 else None
