"""The gate's HTTP adapter: Flask hooks that translate a request into the gate's calls
(`gate.gate`) and nothing else of its own but HTTP's body handling.

Every refusal is a `FlaskServeError` (with its `Retry-After` or `WWW-Authenticate` header)
raised by the gate or here and rendered by the app's one error handler (in OpenAI's error shape
on OpenAI's routes).

Order on a request, cheapest refusal first; none of 1-2 reads the body, so a client without a
valid key cannot make the server wait for (or buffer) one:

1. the gate's key, scope, admin, rate-limit and token-quota checks (`Gate.identify`, then
   `Gate.permit`: 401, 403, 429), with the access the route declared
   (`protocol.route_policy`);
2. a chunked body (no Content-Length) over `--max-request-bytes` gets 413, as a sized one does;
3. admission: an inference request reads its body, then waits at most `--max-queue-ms` for one
   of the worker's `--threads` slots, else 503 + `Retry-After: 1` (`gate.admission`).

After the view, a streamed response (any route's) keeps its slot until it is closed, and is
held to `--max-stream-bytes` and `--max-stream-seconds` as it passes (`gate.streams`).

Inside the data plane, as its steps (`gate.steps`, shared with gRPC): the batch-row limit
(400), the request's deadline (504 when it ran out while waiting), and the usage the gate meters
after the response (`Gate.record`). The gate leaves the key id in the request's
`InferenceContext`, which the route hands to the data plane.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import InvalidInput, NotFound
from flaskserve.core.stream_limits import StreamLimits
from flaskserve.gate import dashboard_data, metering, policy, received, streams, usage_report
from flaskserve.gate.admission import Admission
from flaskserve.gate.gate import Gate, Knock
from flaskserve.gate.keys import KeyStore
from flaskserve.gate.limits import open_buckets
from flaskserve.protocol.hook_chain import HookChain
from flaskserve.protocol.http_context import current, http_context, route
from flaskserve.protocol.route_policy import admin_route
from flaskserve.protocol.v2 import json_response
from flaskserve.settings import Settings

#: The 401's advice to an HTTP client.
HOW_TO_SEND = "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def usage_db_path(settings: Settings) -> Path | None:
    """Where usage is metered: `--usage-db`, else `usage.sqlite3` beside the keys file; None
    (no metering) when neither API keys nor a database are configured."""
    if settings.usage_db:
        return Path(settings.usage_db)
    if settings.auth:
        return Path(settings.auth).with_name("usage.sqlite3")
    return None


def install(
    app: Flask, dataplane: DataPlane, settings: Settings, hooks: HookChain | None = None
) -> Gate:
    """Put the gate (keys, rate limits, overload shedding and metering, as `settings` ask) in
    front of `app`'s routes (the hooks on `hooks` when given, which runs them as one hook of
    each kind); the data plane's own steps (`gate.steps`) were given to `dataplane` when it
    was built."""
    db_path = usage_db_path(settings)
    gate = Gate(
        keys=KeyStore(Path(settings.auth)) if settings.auth else None,
        meter=metering.Meter(db_path) if db_path is not None else None,
        buckets=open_buckets(settings.state_dir),
        admission=Admission(settings.threads, settings.max_queue_ms / 1000.0),
        repository=dataplane.repository,
        streams=StreamLimits(settings.max_stream_bytes, settings.max_stream_seconds),
    )
    if gate.metered:
        app.wsgi_app = received.count_input(app.wsgi_app)  # type: ignore[method-assign,assignment]
    app.register_blueprint(_usage_blueprint(gate))
    app.register_blueprint(
        dashboard_data.create_blueprint(dataplane.repository, gate.keys, gate.meter)
    )
    target: Flask | HookChain = hooks if hooks is not None else app
    target.before_request(_gate(gate))
    target.teardown_request(lambda _: gate.admission.leave(current()))
    target.after_request(_streams_keep_their_slot(gate))
    target.after_request(_metering(gate))
    return gate


def admits_body(gate: Gate | None, environ: dict[str, Any]) -> bool:
    """Whether the app behind `gate` may read the body of the request of `environ`: not when it
    has API keys and the request presents no valid one, since it is then refused (401) before
    its body is read (every route that reads a body needs a key). The engine asks before it
    reads the body (`engine`), so a client without a key cannot make a worker buffer one."""
    if gate is None:
        return True
    return gate.admits_body(
        policy.key_from(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))
    )


def _gate(gate: Gate) -> Callable[[], None]:
    def check() -> None:
        state = current()
        declared = route(state)
        if declared is None:  # no such route: Flask answers 404/405
            return
        inference = declared.inference
        context = http_context() if inference else None
        knock = Knock(
            policy.presented_key(request),
            declared.access,
            request.path,
            HOW_TO_SEND,
            model=lambda: policy.requested_model(request, gate.served(), declared),
            inference=inference,
            generates=declared.generates,
        )
        key = gate.identify(knock, context)
        if key is not None:  # the request's state names the key, refused or not
            state.key_id = key.id
        gate.permit(knock, key)
        coding = request.environ.get("HTTP_TRANSFER_ENCODING", "")
        if "chunked" in coding.lower():
            _check_chunked_size(request.max_content_length)
        if inference:
            request.get_data()  # cached for the route; see `gate.admission`
            gate.admission.enter(state)

    return check


def _streams_keep_their_slot(gate: Gate) -> Callable[[Response], Response]:
    """A streamed response keeps its slot until it is closed, and is held to the stream limits
    (`gate.streams`; metering, which runs first, may have wrapped it already: one wrapper)."""
    admission, limits = gate.admission, gate.streams

    def keep(response: Response) -> Response:
        if response.is_streamed:
            state = current()
            state.streaming = True  # a reload lets it finish (serving.reload)
            streams.bound_stream(response, limits)
            if state.slot:
                response.call_on_close(admission.defer(state))
        return response

    return keep


def _check_chunked_size(limit: int | None) -> None:
    """413 for a chunked body over the size limit. Werkzeug stops reading such a body at the
    limit and hands the app the first `limit` bytes as if that were all (a 400 at best, from
    a parser seeing a cut body); one more byte from the server's stream tells the two apart."""
    if not limit:
        return
    body = request.get_data()  # cached: the route reads the same bytes
    if len(body) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def _metering(gate: Gate) -> Callable[[Response], Response]:
    def meter(response: Response) -> Response:
        state = current()
        declared = route(state)
        if declared is None or not declared.inference:
            return response
        context = state.context
        if not gate.billable(context):
            return response
        served = context is not None and context.served is not None
        # The model named is read now: at close the request (and its body) is gone.
        named = None if served else policy.requested_model(request, gate.served(), declared)
        bytes_in = received.received(state)
        status = response.status_code
        if response.is_streamed:  # counted as its pieces pass: measuring first would buffer it
            sent = streams.sent_counter(response, gate.streams)
            out: Callable[[], int] = lambda: sent.bytes  # noqa: E731
        else:
            length = response.calculate_content_length() or 0
            out = lambda: length  # noqa: E731
        # Once the server has written the response (WSGI close), not before: a worker killed
        # between building an answer and sending it must not bill the client for it; and a
        # stream has counted the tokens (and bytes) it sent by then.
        response.call_on_close(lambda: gate.record(context, named, status, bytes_in, out()))
        return response

    return meter


def _usage_blueprint(gate: Gate) -> Blueprint:
    bp = Blueprint("gate", __name__)

    @bp.get("/v2/usage")
    @admin_route
    def usage() -> Response:
        if gate.meter is None:
            raise NotFound(
                "usage metering is off; serve with --auth keys.toml or --usage-db PATH to meter "
                "usage"
            )
        since_text = request.args.get("since")
        since = None
        if since_text:
            try:
                since = usage_report.parse_since(since_text)
            except ValueError as exc:
                raise InvalidInput(str(exc).replace("--since", "since")) from None
        rows = gate.meter.report(since)
        return json_response(
            {"since": usage_report.since_label(since), "usage": [row.as_dict() for row in rows]}
        )

    return bp
