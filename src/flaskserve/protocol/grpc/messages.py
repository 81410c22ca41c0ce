"""The protocol's message classes, built from descriptor.py in a descriptor pool of our own.

A private pool, not protobuf's default one: `tritonclient.grpc` (and any other copy of the
protocol) registers the same `inference.*` names in the default pool, and protobuf refuses a
second definition of a name there, so both could not be imported in one process.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from flaskserve.protocol.grpc.descriptor import SERIALIZED

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_file = descriptor_pb2.FileDescriptorProto.FromString(SERIALIZED)
POOL = descriptor_pool.DescriptorPool()
_classes = message_factory.GetMessages([_file], pool=POOL)


def _message(name: str) -> Any:
    return _classes[f"{PACKAGE}.{name}"]


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
InferTensorContents = _message("InferTensorContents")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
ModelStreamInferResponse = _message("ModelStreamInferResponse")
ModelStatisticsRequest = _message("ModelStatisticsRequest")
ModelStatisticsResponse = _message("ModelStatisticsResponse")
RepositoryIndexRequest = _message("RepositoryIndexRequest")
RepositoryIndexResponse = _message("RepositoryIndexResponse")
RepositoryModelLoadRequest = _message("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = _message("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = _message("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = _message("RepositoryModelUnloadResponse")


def method_types() -> dict[str, tuple[Any, Any]]:
    """Each RPC of the service: name -> (request class, response class)."""
    service = POOL.FindServiceByName(SERVICE)
    return {
        method.name: (
            _classes[method.input_type.full_name],
            _classes[method.output_type.full_name],
        )
        for method in service.methods
    }
