"""Wiring the service layer into the Flask app: one gate before each request, one meter after.

Every refusal is a `FlaskServeError` (with its `Retry-After` or `WWW-Authenticate` header)
raised here and rendered by the app's one error handler.

Order of checks on a request, cheapest refusal first; none of 1-2 reads the body, so a client
without a valid key cannot make the server wait for (or buffer) one:

1. authentication and permission: 401 (no key, or an unknown one) with `WWW-Authenticate`,
   403 (the key may not use this model, or the route needs an admin key);
2. the key's rate limit: 429 + `Retry-After`; on a generation route, the key's token quota
   (`tokens` in the keys file, against the tokens metered so far): 429 before any stream;
3. a chunked body (no Content-Length) over `--max-request-bytes` gets 413, as a sized one does;
4. admission: an inference request reads its body, then waits at most `--max-queue-ms` for one
   of the worker's `--threads` slots, else 503 + `Retry-After: 1` (`service.admission`).

Inside the data plane, as its steps (`service.steps`, shared with gRPC): the batch-row limit
(400), the request's deadline (504 when it ran out while waiting), and the usage metered here
after the response. The gate leaves the key id and the arrival time in the request's
`InferenceContext`, which the route hands to the data plane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
)
from flaskserve.protocol.hook_chain import HookChain
from flaskserve.protocol.http_context import CONTEXT_KEY, http_context
from flaskserve.protocol.v2 import json_response
from flaskserve.service import auth, dashboard, metering, prometheus, received
from flaskserve.service.admission import SLOT_KEY, Admission
from flaskserve.service.keys import KeyStore
from flaskserve.service.limits import LocalBuckets, SharedBuckets, open_buckets
from flaskserve.service.reload import STREAMING_KEY
from flaskserve.settings import Settings

#: WSGI environ keys: the access log can show the key id next to the request id.
KEY_ID_KEY = "flaskserve.key_id"
#: Retry-After (seconds) of a spent token quota: it does not refill by itself.
QUOTA_RETRY_AFTER = 3600


def usage_db_path(settings: Settings) -> Path | None:
    """Where usage is metered: `--usage-db`, else `usage.sqlite3` beside the keys file; None
    (no metering) when neither API keys nor a database are configured."""
    if settings.usage_db:
        return Path(settings.usage_db)
    if settings.auth:
        return Path(settings.auth).with_name("usage.sqlite3")
    return None


@dataclass
class Service:
    """What the hooks of one app share."""

    keys: KeyStore | None
    meter: metering.Meter | None
    buckets: LocalBuckets | SharedBuckets
    max_batch_rows: int
    request_timeout: float
    admission: Admission


def install(
    app: Flask, dataplane: DataPlane, settings: Settings, hooks: HookChain | None = None
) -> Service:
    """Add keys, rate limits, overload shedding and metering to `app` as `settings` ask (the
    hooks on `hooks` when given, which runs them as one hook of each kind); the data plane's
    own steps (`service.steps`) were given to `dataplane` when it was built."""
    db_path = usage_db_path(settings)
    service = Service(
        keys=KeyStore(Path(settings.auth)) if settings.auth else None,
        meter=metering.Meter(db_path) if db_path is not None else None,
        buckets=open_buckets(settings.state_dir),
        max_batch_rows=settings.max_batch_rows,
        request_timeout=settings.request_timeout_ms / 1000.0,
        admission=Admission(settings.threads, settings.max_queue_ms / 1000.0),
    )
    app.extensions["flaskserve.service"] = service
    if service.meter is not None or service.keys is not None:
        app.wsgi_app = received.count_input(app.wsgi_app)  # type: ignore[method-assign,assignment]
    app.register_blueprint(_usage_blueprint(service))
    app.register_blueprint(dashboard.create_blueprint(dataplane.repository, service.keys,
                                                      service.meter))
    target: Flask | HookChain = hooks if hooks is not None else app
    target.before_request(_gate(dataplane, service))
    target.teardown_request(lambda _: service.admission.leave(request.environ))
    target.after_request(_streams_keep_their_slot(service.admission))
    target.after_request(_metering(dataplane, service))
    return service


def admits_body(app: Flask, environ: dict[str, Any]) -> bool:
    """Whether `app` may read the body of the request of `environ`: not when it has API keys and
    the request presents no valid one, since it is then refused (401) before its body is read
    (every route that reads a body needs a key). The engine asks before it reads the body
    (`engine`), so a client without a key cannot make a worker buffer one."""
    service: Service | None = app.extensions.get("flaskserve.service")
    if service is None or service.keys is None:
        return True
    presented = auth.key_from(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))
    return presented is not None and service.keys.authenticate(presented) is not None


def _gate(dataplane: DataPlane, service: Service) -> Callable[[], None]:
    repository = dataplane.repository

    def gate() -> None:
        if request.endpoint is None:  # no such route: Flask answers 404/405
            return
        admit(request.endpoint)
        coding = request.environ.get("HTTP_TRANSFER_ENCODING", "")
        if "chunked" in coding.lower():
            _check_chunked_size(request.max_content_length)
        if request.endpoint in auth.INFERENCE_ENDPOINTS:
            request.get_data()  # cached for the route; see `service.admission`
            service.admission.enter(request.environ)

    def admit(endpoint: str) -> None:
        """Raise the refusal for this request, if any."""
        inference = endpoint in auth.INFERENCE_ENDPOINTS
        context = http_context() if inference else None
        if service.keys is None:
            return
        access = auth.access_of(endpoint, request.path)
        if access == auth.OPEN:
            return
        presented = auth.presented_key(request)
        if presented is None:
            raise Unauthorized(
                "this server needs an API key: send 'Authorization: Bearer <key>' or "
                "'X-API-Key: <key>'"
            )
        key = service.keys.authenticate(presented)
        if key is None:
            raise Unauthorized(
                "the API key is not valid (unknown or revoked); ask the operator for a key",
                'Bearer realm="flaskserve", error="invalid_token"',
            )
        request.environ[KEY_ID_KEY] = key.id
        if context is not None:
            context.key_id = key.id
        if access == auth.ADMIN and not key.admin:
            raise Forbidden(f"API key {key.id!r} is not an admin key; {request.path} needs one")
        if access == auth.MODEL:
            served = [entry.name for entry in repository.entries()]
            model = auth.requested_model(request, served)
            if not key.allows(model):
                raise Forbidden(auth.not_allowed(key, model))
        if context is not None and key.rate > 0:
            retry_after = service.buckets.take(key.id, key.rate, key.bucket_size)
            if retry_after:
                raise RateLimited(
                    f"API key {key.id!r} is limited to {key.rate:g} requests/s; retry after "
                    f"{retry_after}s",
                    retry_after,
                )
        if key.tokens and endpoint in auth.GENERATE_ENDPOINTS and service.meter is not None:
            used = service.meter.tokens_used(key.id)
            if used >= key.tokens:
                raise RateLimited(
                    f"API key {key.id!r} has used {used} of its {key.tokens} tokens; ask the "
                    "operator for a larger quota",
                    QUOTA_RETRY_AFTER,
                )

    return gate


def _streams_keep_their_slot(admission: Admission) -> Callable[[Response], Response]:
    def keep(response: Response) -> Response:
        if response.is_streamed:
            request.environ[STREAMING_KEY] = True  # a reload lets it finish (service.reload)
            if SLOT_KEY in request.environ:
                response.call_on_close(admission.defer(request.environ))
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




def _metering(dataplane: DataPlane, service: Service) -> Callable[[Response], Response]:
    repository = dataplane.repository
    metered = service.meter is not None or service.keys is not None

    def meter(response: Response) -> Response:
        if not metered or request.endpoint not in auth.INFERENCE_ENDPOINTS:
            return response
        environ = request.environ
        context = environ.get(CONTEXT_KEY)
        key_id = context.key_id if context is not None else None
        if key_id is None:
            if service.keys is not None:  # refused before the key was read: not billable
                return response
            key_id = metering.ANONYMOUS
        served = [entry.name for entry in repository.entries()]
        if context is not None and context.served is not None:
            model, items, compute = context.served.name, context.rows, context.compute
        else:  # refused before (or by) the data plane: metered against the model named
            model = auth.requested_model(request, served)
            items, compute = 0, context.compute if context is not None else 0.0
        if model not in served:
            model = prometheus.UNKNOWN_MODEL
        bytes_in = received.received(environ)
        # Never of a stream: Werkzeug would read the whole stream into memory to measure it.
        bytes_out = 0 if response.is_streamed else (response.calculate_content_length() or 0)
        status = response.status_code

        def record() -> None:
            # Read at close: a stream has counted the tokens it sent by then.
            compute_now, items_now, tokens = compute, items, (0, 0)
            if context is not None:
                compute_now = context.compute
                items_now = context.rows if context.served is not None else items
                tokens = (context.prompt_tokens, context.completion_tokens)
            if service.meter is not None:
                service.meter.record(
                    key_id, model, status >= 400, items_now, bytes_in, bytes_out,
                    round(compute_now * 1e6), *tokens,
                )
            if service.keys is not None:
                prometheus.count(
                    key_id, model, status, items_now, bytes_in, bytes_out, compute_now, *tokens
                )

        # Once the server has written the response (WSGI close), not before: a worker killed
        # between building an answer and sending it must not bill the client for it.
        response.call_on_close(record)
        return response

    return meter


def _usage_blueprint(service: Service) -> Blueprint:
    bp = Blueprint("service", __name__)

    @bp.get("/v2/usage")
    def usage() -> Response:
        if service.meter is None:
            raise NotFound(
                "usage metering is off; serve with --auth keys.toml or --usage-db PATH to meter "
                "usage"
            )
        since_text = request.args.get("since")
        since = None
        if since_text:
            try:
                since = metering.parse_since(since_text)
            except ValueError as exc:
                raise InvalidInput(str(exc).replace("--since", "since")) from None
        rows = service.meter.report(since)
        return json_response(
            {"since": metering.since_label(since), "usage": [row.as_dict() for row in rows]}
        )

    return bp
