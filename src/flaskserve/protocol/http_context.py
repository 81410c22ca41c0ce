"""The state of the HTTP request being handled: one typed object, kept under one WSGI environ
key, that every layer reads and fills in (this module owns it).

The engine (`serving.engine`) makes it when it queues the request for a thread; on a server
without that engine (Flask's test client, `--debug`) the first reader does (`state_of`). The
request hooks (`observability.requests`) fill in the request id, the route's declaration and the
metric labels; the gate the key, the admission slot and the streaming mark; the routes parse
their body into it once. The access log reads it after the response. A field that does not
exist is an `AttributeError` (and a mypy error), not a key that silently reads None.

The route hands `http_context()` (the `InferenceContext` in the state) to `DataPlane.infer`;
after the response the metering hook reads the usage the data plane's steps left in it. Routes
pass it explicitly, so nothing inside the data plane reads Flask's request.
"""

from __future__ import annotations

from typing import Any, Protocol

from flask import current_app, request

from flaskserve.core.context import InferenceContext
from flaskserve.protocol.route_policy import RoutePolicy, policy_of

#: The WSGI environ key of the request's `RequestState`: the only one flaskserve sets.
STATE_KEY = "flaskserve.request"
#: `RequestState.body` before the body was parsed.
UNPARSED: Any = object()


class Counted(Protocol):
    """The request body's reader, counting the bytes the app read (`gate.received`)."""

    @property
    def count(self) -> int: ...


class RequestState:
    """What flaskserve knows of one HTTP request, beyond its environ."""

    __slots__ = (
        "body",
        "context",
        "cors_origin",
        "input",
        "key_id",
        "labels",
        "model",
        "queued",
        "request_id",
        "route",
        "slot",
        "started",
        "streaming",
    )

    def __init__(self, queued: float | None = None) -> None:
        #: `time.monotonic()` when the engine queued the request for a thread (`gate.admission`
        #: counts the wait for a slot from then); None on a server without that engine.
        self.queued = queued
        #: The request id (the client's `X-Request-ID` when sensible), set by the first hook.
        self.request_id: str | None = None
        #: The matched route's declaration (`route`); None before it was looked up.
        self.route: RoutePolicy | None = None
        #: The inference's context (`http_context`), handed to the data plane.
        self.context: InferenceContext | None = None
        #: An inference route's start (`time.perf_counter()`), model named (the access log's
        #: `model`) and (model, version) metric labels, until the request ended.
        self.started = 0.0
        self.model: str | None = None
        self.labels: tuple[str, str] | None = None
        #: The id of the valid key the request presented, refused or not.
        self.key_id: str | None = None
        #: Holds one of the worker's admission slots (`gate.admission`).
        self.slot = False
        #: The response is a stream: the request runs on its app until the stream is closed.
        self.streaming = False
        #: The counting reader of the body, when usage is metered (`gate.received`).
        self.input: Counted | None = None
        #: The parsed JSON body of a route that names its model there (OpenAI's), parsed once.
        self.body: Any = UNPARSED
        #: An allowed cross-origin page's origin, echoed in `Access-Control-Allow-Origin`.
        self.cors_origin: str | None = None


def state_of(environ: dict[str, Any]) -> RequestState:
    """The state of the request of `environ`, made on first use."""
    state: RequestState | None = environ.get(STATE_KEY)
    if state is None:
        state = environ[STATE_KEY] = RequestState()
    return state


def current() -> RequestState:
    """The state of the request Flask is handling."""
    return state_of(request.environ)


def route(state: RequestState | None = None) -> RoutePolicy | None:
    """The declaration of the route the current request matched (None: no route matched),
    looked up once per request."""
    state = state or current()
    found = state.route
    if found is None:
        found = state.route = policy_of(current_app, request.endpoint)
    return found


def http_context() -> InferenceContext:
    """The current request's context, made on first use (`new_context`)."""
    state = current()
    context = state.context
    if context is None:
        declared = route(state)
        protocol = declared.protocol if declared is not None else None
        context = new_context(state, protocol or "http")
    return context


def new_context(state: RequestState, protocol: str) -> InferenceContext:
    """A context for `state`'s inference, kept in it. It arrived when the engine queued the
    request for a thread (`RequestState.queued`), not when a thread took it up: the request's
    deadline and its time to first token count the wait for a thread."""
    context = state.context = InferenceContext(protocol, state.request_id or "-")
    if state.queued is not None:
        context.arrived = state.queued
    return context
