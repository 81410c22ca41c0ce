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
ModelInfer is rate limited, held to `--max-batch-rows` and `--request-timeout-ms` (or the
client's own deadline, when sooner), metered, and counted in the request metrics with the
protocol label `grpc` and, as status, the HTTP status of the same outcome (so one alert on 5xx
covers both protocols).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from flaskserve.core import deadlines
from flaskserve.core.errors import FlaskServeError
from flaskserve.core.model import Arrays, Model
from flaskserve.core.repository import ModelRepository
from flaskserve.observability import metrics
from flaskserve.protocol.grpc.servicer import Call, Run
from flaskserve.service import metering, prometheus
from flaskserve.service.hooks import Service
from flaskserve.service.keys import ApiKey
from flaskserve.service.limits import batch_rows, check_batch_rows

OPEN_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady", "ServerMetadata"})
MODEL_RPCS = frozenset({"ModelMetadata", "ModelInfer"})
#: A model's statistics need a key allowed on it; every model's, an admin key.
STATISTICS_RPC = "ModelStatistics"
INFER_RPC = "ModelInfer"
PROTOCOL = "grpc"


class Unauthenticated(FlaskServeError):
    status_code = 401


class PermissionDenied(FlaskServeError):
    status_code = 403


class RateLimited(FlaskServeError):
    status_code = 429


def presented_key(metadata: Mapping[str, str]) -> str | None:
    """The key from `authorization: Bearer <key>`, else from `x-api-key`; None if neither."""
    header = metadata.get("authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = metadata.get("x-api-key")
    return value.strip() if value and value.strip() else None


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
        time_left: float | None,
    ) -> Call:
        return GuardedCall(self, rpc, model, version, metadata, time_left)


class GuardedCall:
    def __init__(
        self,
        guard: GrpcGuard,
        rpc: str,
        model: str | None,
        version: str | None,
        metadata: Mapping[str, str],
        time_left: float | None,
    ) -> None:
        self.guard = guard
        self.rpc = rpc
        self.model = model
        self.version = version
        self.metadata = metadata
        self.started = time.perf_counter()
        self.deadline = None if time_left is None else time.monotonic() + time_left
        self.key_id: str | None = None
        self.usage: tuple[str, int, float] | None = None
        self.inference = rpc == INFER_RPC
        if self.inference:
            self.labels = self._labels()
            self.in_flight_label = self.labels[0]
            metrics.request_started(self.in_flight_label)

    def _labels(self) -> tuple[str, str]:
        """(model, version) metric labels, as the HTTP routes use them."""
        return metrics.model_labels(self.guard.repository, self.model, self.version)

    def admit(self) -> None:
        service = self.guard.service
        rpc = self.rpc
        if service.keys is None or rpc in OPEN_RPCS:
            return
        presented = presented_key(self.metadata)
        if presented is None:
            raise Unauthenticated(
                "this server needs an API key: send the metadata 'authorization: Bearer <key>'"
            )
        key = service.keys.authenticate(presented)
        if key is None:
            raise Unauthenticated(
                "the API key is not valid (unknown or revoked); ask the operator for a key"
            )
        self.key_id = key.id
        if rpc in MODEL_RPCS or (rpc == STATISTICS_RPC and self.model):
            if not key.allows(self.model):
                raise PermissionDenied(_not_allowed(key, self.model))
        elif not key.admin:
            raise PermissionDenied(f"API key {key.id!r} is not an admin key; {rpc} needs one")
        if self.inference and key.rate > 0:
            retry_after = service.buckets.take(key.id, key.rate, key.bucket_size)
            if retry_after:
                raise RateLimited(
                    f"API key {key.id!r} is limited to {key.rate:g} requests/s; retry after "
                    f"{retry_after}s"
                )

    def infer(self, inputs: Mapping[str, np.ndarray], run: Run) -> tuple[Model, Arrays]:
        service = self.guard.service
        name = self.model or ""
        if service.max_batch_rows:
            check_batch_rows(name, inputs, service.max_batch_rows)
        deadline = self.deadline
        if service.request_timeout:
            ours = time.monotonic() + service.request_timeout
            deadline = ours if deadline is None else min(deadline, ours)
        started = time.perf_counter()
        result: tuple[Model, Arrays] | None = None
        try:
            with deadlines.until(deadline):
                result = run()
            return result
        finally:
            model = result[0].name if result is not None else name
            items = batch_rows(inputs) if result is not None else 0
            self.usage = (model, items, time.perf_counter() - started)
            if result is not None:
                self.labels = (result[0].name, result[0].version)

    def done(self, status: int, bytes_in: int, bytes_out: int) -> None:
        if not self.inference:
            return
        model, version = self.labels
        elapsed = time.perf_counter() - self.started
        metrics.request_answered(model, version, PROTOCOL, str(status), elapsed)
        metrics.request_ended(self.in_flight_label)
        self._meter(status, bytes_in, bytes_out)

    def _meter(self, status: int, bytes_in: int, bytes_out: int) -> None:
        service = self.guard.service
        if service.meter is None and service.keys is None:
            return
        key_id = self.key_id
        if key_id is None:
            if service.keys is not None:  # refused before the key was read: not billable
                return
            key_id = metering.ANONYMOUS
        served = [entry.name for entry in self.guard.repository.entries()]
        model, items, compute = self.usage or (self.model or "", 0, 0.0)
        if model not in served:
            model = prometheus.UNKNOWN_MODEL
        if service.meter is not None:
            service.meter.record(
                key_id, model, status >= 400, items, bytes_in, bytes_out, round(compute * 1e6)
            )
        if service.keys is not None:
            prometheus.count(key_id, model, status, items, bytes_in, bytes_out, compute)


def _not_allowed(key: ApiKey, model: str | None) -> str:
    allowed = ", ".join(key.models)
    return f"API key {key.id!r} may not use model {model!r}; it may use: {allowed}"
