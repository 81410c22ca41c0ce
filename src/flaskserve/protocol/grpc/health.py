"""`grpc.health.v1.Health`: the standard gRPC health check, so probes need no flaskserve client.

Kubernetes' `grpc` probe, `grpc_health_probe` and load balancers call `Check`. The server (the
empty service name) and `inference.GRPCInferenceService` are SERVING exactly when
`/v2/health/ready` answers 200 (every model that should serve is loaded), NOT_SERVING
otherwise; any other name is NOT_FOUND, as the protocol asks. `Watch` is not served (UNIMPLEMENTED
is the protocol's answer for servers without it); probes do not use it.

The messages are declared here in a few lines rather than taken from grpcio-health-checking,
whose generated code ties each release to one protobuf major version, in a private descriptor
pool like the inference protocol's (see messages.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from flaskserve.protocol.grpc.messages import SERVICE as INFERENCE_SERVICE

PACKAGE = "grpc.health.v1"
SERVICE = f"{PACKAGE}.Health"
#: HealthCheckResponse.ServingStatus, with the protocol's numbers.
SERVING, NOT_SERVING = 1, 2
#: The names a client may ask about; "" is the whole server.
KNOWN_SERVICES = frozenset({"", INFERENCE_SERVICE})


def _file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/health/v1/health.proto, without Watch (the published names and field numbers)."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="grpc/health/v1/health.proto", package=PACKAGE, syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(
        name="service",
        json_name="service",
        number=1,
        type=field.TYPE_STRING,
        label=field.LABEL_OPTIONAL,
    )
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        json_name="status",
        number=1,
        type=field.TYPE_ENUM,
        label=field.LABEL_OPTIONAL,
        type_name=f".{PACKAGE}.HealthCheckResponse.ServingStatus",
    )
    service = proto.service.add(name="Health")
    service.method.add(
        name="Check",
        input_type=f".{PACKAGE}.HealthCheckRequest",
        output_type=f".{PACKAGE}.HealthCheckResponse",
    )
    return proto


_classes = message_factory.GetMessages([_file()], pool=descriptor_pool.DescriptorPool())
HealthCheckRequest = _classes[f"{PACKAGE}.HealthCheckRequest"]
HealthCheckResponse = _classes[f"{PACKAGE}.HealthCheckResponse"]


def handler(ready: Callable[[], bool]) -> grpc.GenericRpcHandler:
    """The Health service for `grpc.Server.add_generic_rpc_handlers`; `ready()` is asked on
    every Check. Open to every caller, like `/v2/health/ready`: probes carry no key."""

    def check(request: Any, context: grpc.ServicerContext) -> Any:
        if request.service not in KNOWN_SERVICES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return HealthCheckResponse(status=SERVING if ready() else NOT_SERVING)

    method = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=HealthCheckRequest.FromString,
        response_serializer=HealthCheckResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Check": method})
