"""The service layer for gRPC calls: the same keys, limits, metering and metrics as HTTP.

`GrpcGuard` is the `Hooks` the gRPC servicer calls once per RPC. It shares the app's `Service`
(key store, rate-limit buckets, meter), so a key, its rate and its usage are one across both
protocols. Access follows the HTTP routes' rules (`service.auth`):

- open: ServerLive, ServerReady, ModelReady, ServerMetadata (health and what a client probes);
- a key allowed on the model: ModelMetadata, ModelInfer, and ModelStatistics naming a model;
- an admin key: RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload, and
  ModelStatistics of every model (no name). Without keys, load and unload need
  `--model-control`, as over HTTP.

The key comes in the call's metadata as `authorization: Bearer <key>` (or `x-api-key`).
ModelInfer is rate limited here, held to `--max-batch-rows` and `--request-timeout-ms` (or the
client's own deadline, when sooner) by the data plane's steps (`service.steps`, as over HTTP),
metered from the usage those steps leave in the call's `InferenceContext`, and counted in the
request metrics with the protocol label `grpc` and, as status, the HTTP status of the same
outcome (so one alert on 5xx covers both protocols).

Overload: a ModelInfer call takes one of the worker's `--threads` admission slots, the same
slots HTTP inference takes (`service.admission`), and waits at most `--max-queue-ms` for one;
past that it is refused with `UNAVAILABLE` (HTTP's 503), at once, instead of joining a queue
that only grows. The gRPC server runs more handler threads than slots for those waits and
refuses calls beyond them with `RESOURCE_EXHAUSTED` before any thread is taken
(`protocol.grpc.server`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from flaskserve.core.context import InferenceContext
from flaskserve.core.errors import Forbidden, RateLimited, Unauthorized
from flaskserve.core.repository import ModelRepository
from flaskserve.observability import metrics
from flaskserve.protocol.grpc.servicer import PROTOCOL, Call
from flaskserve.service import auth, metering, prometheus
from flaskserve.service.hooks import Service

OPEN_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady", "ServerMetadata"})
MODEL_RPCS = frozenset({"ModelMetadata", "ModelInfer"})
#: A model's statistics need a key allowed on it; every model's, an admin key.
STATISTICS_RPC = "ModelStatistics"
INFER_RPC = "ModelInfer"


def presented_key(metadata: Mapping[str, str]) -> str | None:
    """The key from `authorization: Bearer <key>`, else from `x-api-key`; None if neither."""
    return auth.key_from(metadata.get("authorization"), metadata.get("x-api-key"))


class GrpcGuard:
    """Builds one `GuardedCall` per RPC."""

    def __init__(self, service: Service, repository: ModelRepository) -> None:
        self.service = service
        self.repository = repository

    def __call__(
        self,
        rpc: str,
        model: str | None,
        version: str | None,
        metadata: Mapping[str, str],
        context: InferenceContext,
    ) -> Call:
        return GuardedCall(self, rpc, model, version, metadata, context)


class GuardedCall:
    def __init__(
        self,
        guard: GrpcGuard,
        rpc: str,
        model: str | None,
        version: str | None,
        metadata: Mapping[str, str],
        context: InferenceContext,
    ) -> None:
        self.guard = guard
        self.rpc = rpc
        self.model = model
        self.version = version
        self.metadata = metadata
        self.context = context
        self.started = time.perf_counter()
        self.inference = rpc == INFER_RPC
        #: Holds the admission slot while the call has one (`Admission` keys it like a request).
        self.slot: dict[str, object] = {}
        if self.inference:
            self.labels = self._labels()
            self.in_flight_label = self.labels[0]
            metrics.request_started(self.in_flight_label)

    def _labels(self) -> tuple[str, str]:
        """(model, version) metric labels, as the HTTP routes use them."""
        return metrics.model_labels(self.guard.repository, self.model, self.version)

    def admit(self) -> None:
        """Check the key (and its rate), then, for ModelInfer, wait for an admission slot."""
        self._check_key()
        if self.inference:
            self.guard.service.admission.enter(self.slot)

    def _check_key(self) -> None:
        service = self.guard.service
        rpc = self.rpc
        if service.keys is None or rpc in OPEN_RPCS:
            return
        presented = presented_key(self.metadata)
        if presented is None:
            raise Unauthorized(
                "this server needs an API key: send the metadata 'authorization: Bearer <key>'"
            )
        key = service.keys.authenticate(presented)
        if key is None:
            raise Unauthorized(
                "the API key is not valid (unknown or revoked); ask the operator for a key",
                'Bearer realm="flaskserve", error="invalid_token"',
            )
        self.context.key_id = key.id
        if rpc in MODEL_RPCS or (rpc == STATISTICS_RPC and self.model):
            if not key.allows(self.model):
                raise Forbidden(auth.not_allowed(key, self.model))
        elif not key.admin:
            raise Forbidden(f"API key {key.id!r} is not an admin key; {rpc} needs one")
        if self.inference and key.rate > 0:
            retry_after = service.buckets.take(key.id, key.rate, key.bucket_size)
            if retry_after:
                raise RateLimited(
                    f"API key {key.id!r} is limited to {key.rate:g} requests/s; retry after "
                    f"{retry_after}s",
                    retry_after,
                )

    def done(self, status: int, bytes_in: int, bytes_out: int) -> None:
        if not self.inference:
            return
        self.guard.service.admission.leave(self.slot)
        served = self.context.served
        model, version = (served.name, served.version) if served is not None else self.labels
        elapsed = time.perf_counter() - self.started
        metrics.request_answered(model, version, PROTOCOL, str(status), elapsed)
        metrics.request_ended(self.in_flight_label)
        self._meter(status, bytes_in, bytes_out)

    def _meter(self, status: int, bytes_in: int, bytes_out: int) -> None:
        service = self.guard.service
        if service.meter is None and service.keys is None:
            return
        context = self.context
        key_id = context.key_id
        if key_id is None:
            if service.keys is not None:  # refused before the key was read: not billable
                return
            key_id = metering.ANONYMOUS
        served = [entry.name for entry in self.guard.repository.entries()]
        if context.served is not None:
            model, items, compute = context.served.name, context.rows, context.compute
        else:  # refused before (or by) the data plane: metered against the model named
            model, items, compute = self.model or "", 0, context.compute
        if model not in served:
            model = prometheus.UNKNOWN_MODEL
        tokens = (context.prompt_tokens, context.completion_tokens)
        if service.meter is not None:
            service.meter.record(
                key_id, model, status >= 400, items, bytes_in, bytes_out, round(compute * 1e6),
                *tokens,
            )
        if service.keys is not None:
            prometheus.count(key_id, model, status, items, bytes_in, bytes_out, compute, *tokens)


