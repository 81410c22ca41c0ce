"""The gate's gRPC adapter: each RPC translated into the gate's calls (`gate.gate`), so a key,
its rate and its usage are one across both protocols.

`GrpcGuard` is the `Hooks` the gRPC servicer calls once per RPC (and once per request of a
`ModelStreamInfer` stream, as a ModelInfer). Access follows the HTTP routes' rules
(`gate.policy`):

- open: ServerLive, ServerReady, ModelReady, ServerMetadata (health and what a client probes);
- a key allowed on the model: ModelMetadata, ModelInfer, and ModelStatistics naming a model;
- an admin key: RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload, ModelStatistics
  of every model (no name), and any RPC not in the table. Without keys, load and unload need
  `--model-control`, as over HTTP.

The table (`RPCS`) declares each RPC in the HTTP routes' vocabulary (`protocol.route_policy`).

The key comes in the call's metadata as `authorization: Bearer <key>` (or `x-api-key`).
ModelInfer is rate limited and takes one of the worker's admission slots (the gate's, shared
with HTTP; past `--max-queue-ms` refused with `UNAVAILABLE`, HTTP's 503), is held to
`--max-batch-rows` and `--request-timeout-ms` by the data plane's steps (`gate.steps`), and is
metered by the gate from the usage those steps leave in the call's `InferenceContext`. The
servicer maps the gate's refusals to gRPC status codes (`protocol.grpc.servicer.STATUS_CODES`).

This adapter also counts ModelInfer in the request metrics (what `observability`'s Flask hooks do
for HTTP), with the protocol label `grpc` and, as status, the HTTP status of the same outcome (so
one alert on 5xx covers both protocols).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from flaskserve.core.context import InferenceContext
from flaskserve.core.errors import FlaskServeError
from flaskserve.core.stream_limits import StreamLimits
from flaskserve.gate import policy
from flaskserve.gate.admission import Ticket
from flaskserve.gate.gate import Gate, Knock
from flaskserve.observability import metrics
from flaskserve.protocol.grpc.calls import PROTOCOL
from flaskserve.protocol.grpc.servicer import Call
from flaskserve.protocol.route_policy import ADMIN, MODEL, OPEN, Access, RoutePolicy

_OPEN = RoutePolicy(OPEN)
_ADMIN = RoutePolicy(ADMIN)
STATISTICS_RPC = "ModelStatistics"
#: What each RPC needs and is. A generation's token quota is decided per call, by its model.
RPCS: dict[str, RoutePolicy] = {
    "ServerLive": _OPEN,
    "ServerReady": _OPEN,
    "ModelReady": _OPEN,
    "ServerMetadata": _OPEN,
    "ModelMetadata": RoutePolicy(MODEL),
    "ModelInfer": RoutePolicy(MODEL, inference=True, protocol=PROTOCOL),
    #: A model's statistics need a key allowed on it; every model's, an admin key (`access_of`).
    "ModelStatistics": RoutePolicy(MODEL),
    "RepositoryIndex": _ADMIN,
    "RepositoryModelLoad": _ADMIN,
    "RepositoryModelUnload": _ADMIN,
}
#: The 401's advice to a gRPC client.
HOW_TO_SEND = "send the metadata 'authorization: Bearer <key>'"


def presented_key(metadata: Mapping[str, str]) -> str | None:
    """The key from `authorization: Bearer <key>`, else from `x-api-key`; None if neither."""
    return policy.key_from(metadata.get("authorization"), metadata.get("x-api-key"))


def access_of(rpc: str, model: str | None) -> Access:
    """What `rpc` (about `model`) needs: `OPEN`, `MODEL` or `ADMIN` (an RPC not in `RPCS`, and
    the statistics of every model)."""
    if rpc == STATISTICS_RPC and not model:
        return ADMIN
    return RPCS.get(rpc, _ADMIN).access


class GrpcGuard:
    """Builds one `GuardedCall` per RPC."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __call__(
        self,
        rpc: str,
        model: str | None,
        version: str | None,
        metadata: Mapping[str, str],
        context: InferenceContext,
    ) -> Call:
        return GuardedCall(self.gate, rpc, model, version, metadata, context)


class GuardedCall:
    """One RPC as the gate sees it."""

    def __init__(
        self,
        gate: Gate,
        rpc: str,
        model: str | None,
        version: str | None,
        metadata: Mapping[str, str],
        context: InferenceContext,
    ) -> None:
        self.gate = gate
        self.model = model
        self.context = context
        self.inference = RPCS.get(rpc, _ADMIN).inference
        self.knock = Knock(
            presented_key(metadata),
            access_of(rpc, model),
            rpc,
            HOW_TO_SEND,
            model=lambda: model,
            inference=self.inference,
            generates=self.inference and _generative(gate, model, version),
        )
        self.started = time.perf_counter()
        #: Holds the admission slot while the call has one.
        self.slot = Ticket()
        if self.inference:
            #: (model, version) metric labels, as the HTTP routes use them.
            self.labels = metrics.model_labels(gate.repository, model, version)
            metrics.request_started(self.labels[0])

    @property
    def stream_limits(self) -> StreamLimits:
        """`--max-stream-bytes` and `--max-stream-seconds`, per generation of a stream."""
        return self.gate.streams

    def admit(self) -> None:
        """Ask the gate (key, scope, rate), then, for ModelInfer, wait for an admission slot."""
        self.gate.check(self.knock, self.context)
        if self.inference:
            self.gate.admission.enter(self.slot)

    def done(self, status: int, bytes_in: int, bytes_out: int) -> None:
        if not self.inference:
            return
        self.gate.admission.leave(self.slot)
        served = self.context.served
        model, version = (served.name, served.version) if served is not None else self.labels
        elapsed = time.perf_counter() - self.started
        metrics.request_answered(model, version, PROTOCOL, str(status), elapsed)
        metrics.request_ended(self.labels[0])
        self.gate.record(self.context, self.model, status, bytes_in, bytes_out)


def _generative(gate: Gate, model: str | None, version: str | None) -> bool:
    """Whether the call is for a generative model, whose key's token quota applies (over
    ModelStreamInfer as on HTTP's generation routes); an unknown model is not: its call
    answers NOT_FOUND."""
    if model is None:
        return False
    try:
        return gate.repository.get(model, version).generative
    except FlaskServeError:
        return False
