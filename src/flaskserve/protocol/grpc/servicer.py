"""`inference.GRPCInferenceService`: the V2 protocol over gRPC, on the same data plane as HTTP.

Each RPC decodes its message, calls the `DataPlane` (or the repository control) exactly as the
HTTP routes do, with an `InferenceContext` made from the call (its `x-request-id` metadata, its
deadline), and encodes the answer. An inference's model is looked up once, and what it
declares is checked by the data plane (signature, row and element limits) before its payload is
decoded, with the same code as HTTP's; the deadline and usage are the data plane's own steps,
shared with HTTP too. What else the gate adds (keys, rate limits, metering, metrics) comes in
through `Hooks`, called once per RPC, so this module knows nothing of keys or meters.

Failures follow the HTTP discipline, mapped to gRPC status codes: a `FlaskServeError` becomes the
code of its HTTP status with its message as the details (a model's own exception is logged with
the request id, which the details name); anything else is logged with its traceback and
answered INTERNAL with one sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from flaskserve.core.context import InferenceContext, StatisticsReport
from flaskserve.core.coordination import RepositoryControl
from flaskserve.core.dataplane import DataPlane
from flaskserve.core.model import Model
from flaskserve.core.request import InferenceRequest
from flaskserve.core.stream_limits import NO_LIMITS, StreamLimits
from flaskserve.protocol.grpc import messages, streaming
from flaskserve.protocol.grpc.calls import inference_context, metadata_of, told
from flaskserve.protocol.grpc.tensors import (
    declare_inputs,
    decode_request,
    encode_response,
    requested_outputs,
)

#: HTTP status of a `FlaskServeError` -> the gRPC status code it is answered with.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class Call(Protocol):
    """The gate's view of one RPC."""

    @property
    def stream_limits(self) -> StreamLimits:
        """What one generation of a `ModelStreamInfer` call may send, and for how long."""
        ...

    def admit(self) -> None:
        """Raise a `FlaskServeError` (401, 403, 429) to refuse the call before any work."""

    def done(self, status: int, bytes_in: int, bytes_out: int) -> None:
        """The call ended with `status` (the HTTP status of the same outcome)."""


class Hooks(Protocol):
    def __call__(
        self,
        rpc: str,
        model: str | None,
        version: str | None,
        metadata: Mapping[str, str],
        context: InferenceContext,
    ) -> Call: ...


class OpenCall:
    """No keys, no limits, nothing recorded."""

    stream_limits = NO_LIMITS

    def admit(self) -> None:
        pass

    def done(self, status: int, bytes_in: int, bytes_out: int) -> None:
        pass


def open_hooks(
    rpc: str,
    model: str | None,
    version: str | None,
    metadata: Mapping[str, str],
    context: InferenceContext,
) -> Call:
    return OpenCall()


class InferenceServicer:
    """The RPCs; `handler()` registers them with a `grpc.Server`."""

    def __init__(
        self,
        dataplane: DataPlane,
        control: RepositoryControl,
        statistics: StatisticsReport,
        hooks: Hooks = open_hooks,
    ) -> None:
        self.dataplane = dataplane
        self.statistics = statistics
        self.repository = dataplane.repository
        self.control = control
        self.hooks = hooks

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {}
        for name, (request_type, response_type) in messages.method_types().items():
            if name == streaming.RPC:
                methods[name] = grpc.stream_stream_rpc_method_handler(
                    lambda requests, context: streaming.stream_infer(self, requests, context),
                    request_deserializer=request_type.FromString,
                    response_serializer=response_type.SerializeToString,
                )
                continue
            methods[name] = grpc.unary_unary_rpc_method_handler(
                self._wrap(name, getattr(self, name)),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(messages.SERVICE, methods)

    def _wrap(
        self, rpc: str, method: Callable[[Any, InferenceContext], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            model, version = _target(request)
            metadata = metadata_of(context)
            inference = inference_context(context, metadata)
            call = self.hooks(rpc, model, version, metadata, inference)
            status, response = 200, None
            try:
                call.admit()
                response = method(request, inference)
                return response
            except Exception as exc:
                status, message = told(exc, rpc, inference.request_id)
                context.abort(STATUS_CODES.get(status, grpc.StatusCode.INTERNAL), message)
            finally:
                bytes_out = response.ByteSize() if response is not None else 0
                call.done(status, request.ByteSize(), bytes_out)

        return serve

    def ServerLive(self, request: Any, context: InferenceContext) -> Any:
        return messages.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: InferenceContext) -> Any:
        return messages.ServerReadyResponse(ready=self.repository.is_ready())

    def ModelReady(self, request: Any, context: InferenceContext) -> Any:
        ready = self.repository.is_model_ready(request.name, request.version or None)
        return messages.ModelReadyResponse(ready=ready)

    def ServerMetadata(self, request: Any, context: InferenceContext) -> Any:
        return messages.ServerMetadataResponse(**self.dataplane.server_metadata())

    def ModelMetadata(self, request: Any, context: InferenceContext) -> Any:
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        response = messages.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for field in ("inputs", "outputs"):
            for spec in meta[field]:
                getattr(response, field).add(
                    name=spec["name"], datatype=spec["datatype"], shape=spec["shape"]
                )
        return response

    def ModelInfer(self, request: Any, context: InferenceContext) -> Any:
        version = request.model_version or None
        model = self.dataplane.lookup(request.model_name, version)  # NOT_FOUND whatever the body
        return self.infer(model, version, request, context)

    def infer(
        self, model: Model, version: str | None, request: Any, context: InferenceContext
    ) -> Any:
        """The `ModelInferResponse` of `model` (looked up for the `version` the client named)
        to `request`: what it declares is checked before its payload is decoded."""
        declared = declare_inputs(request)
        self.dataplane.check(model, declared, requested_outputs(request))
        decoded = decode_request(request, declared)
        result = self.dataplane.infer(
            InferenceRequest(
                model,
                decoded.inputs,
                decoded.datatypes,
                decoded.outputs,
                context,
                version,
                decoded.parameters,
                checked=True,
            )
        )
        return encode_response(result.model, result.outputs, decoded.outputs, request.id)

    def ModelStatistics(self, request: Any, context: InferenceContext) -> Any:
        report = self.statistics(request.name or None, request.version or None)
        return json_format.ParseDict(report, messages.ModelStatisticsResponse())

    def RepositoryIndex(self, request: Any, context: InferenceContext) -> Any:
        response = messages.RepositoryIndexResponse()
        for row in self.control.index(request.ready):
            response.models.add(
                name=row["name"],
                version=row.get("version", ""),
                state=row["state"],
                reason=row.get("reason") or "",
            )
        return response

    def RepositoryModelLoad(self, request: Any, context: InferenceContext) -> Any:
        self.control.load(request.model_name)
        return messages.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request: Any, context: InferenceContext) -> Any:
        self.control.unload(request.model_name)
        return messages.RepositoryModelUnloadResponse()


def _target(request: Any) -> tuple[str | None, str | None]:
    """The model (and version) an RPC is about, whichever field the message names it in."""
    for name_field, version_field in (("model_name", "model_version"), ("name", "version")):
        if name_field in request.DESCRIPTOR.fields_by_name:
            name = getattr(request, name_field) or None
            version = None
            if version_field in request.DESCRIPTOR.fields_by_name:
                version = getattr(request, version_field) or None
            return name, version
    return None, None
