"""The OpenAPI component schemas: the shared ones (V2, V1, SageMaker, OpenAI embeddings) and
those generated from one model's signature."""

from __future__ import annotations

from typing import Any

from flaskserve.core.model import DATATYPES, TensorSpec
from flaskserve.web.openapi.responses import ref

_INTEGER = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}


def _scalar_schema(datatype: str) -> dict[str, Any]:
    if datatype == "BYTES":
        return {"type": "string"}
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype in _INTEGER:
        return {"type": "integer"}
    return {"type": "number"}


COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What to change."}},
    },
    "Tensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
            "data": {
                "type": "array",
                "description": "Row-major values, flat or nested; absent when binary_data_size "
                "says the tensor follows the JSON header as raw bytes.",
            },
        },
    },
    "RequestedOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data": {"type": "boolean"}},
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_output": {"type": "boolean"}},
            },
            "inputs": {"type": "array", "minItems": 1, "items": ref("Tensor")},
            "outputs": {"type": "array", "items": ref("RequestedOutput")},
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": ref("Tensor")},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}},
        },
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": ref("TensorMetadata")},
            "outputs": {"type": "array", "items": ref("TensorMetadata")},
            "state": {"type": "string"},
            "reason": {"type": "string"},
        },
    },
    "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    "ModelReady": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "V1ModelStatus": {
        "type": "object",
        "description": "KServe V1's `name` and `ready`, and OpenAI's model object on the same "
        "answer.",
        "required": ["name", "ready", "id", "object", "owned_by"],
        "properties": {
            "name": {"type": "string"},
            "ready": {"type": "boolean"},
            "id": {"type": "string", "description": "The model's name."},
            "object": {"const": "model"},
            "created": {
                "type": "integer",
                "description": "When the model was loaded (Unix seconds); absent when it is "
                "not loaded.",
            },
            "owned_by": {"type": "string"},
        },
    },
    "RepositoryIndexRequest": {
        "type": "object",
        "properties": {"ready": {"type": "boolean", "description": "Only READY models."}},
    },
    "RepositoryIndex": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "state"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                "reason": {"type": "string"},
            },
        },
    },
    "V1Request": {
        "type": "object",
        "required": ["instances"],
        "properties": {"instances": {"type": "array", "minItems": 1}},
    },
    "V1Response": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array"}},
    },
    "Ping": {"type": "object", "properties": {"status": {"type": "string"}}},
    # OpenAI-compatible routes (protocol/openai.py)
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string", "description": "What to change."},
                    "type": {
                        "type": "string",
                        "enum": [
                            "invalid_request_error",
                            "authentication_error",
                            "permission_error",
                            "rate_limit_error",
                            "server_error",
                        ],
                    },
                    "param": {
                        "type": ["string", "null"],
                        "description": "The request field the error is about.",
                    },
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "An embedding model (one BYTES input [-1], one float output "
                "[-1, D]); GET /v1/models lists the served models.",
            },
            "input": {
                "description": "Text only: a string or a non-empty list of strings (token ids "
                "are refused, as the model tokenises with its own tokenizer).",
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "minItems": 1, "items": {"type": "string"}},
                ],
            },
            "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
            "dimensions": {
                "type": "integer",
                "minimum": 1,
                "description": "Only the model's own vector size is accepted.",
            },
            "user": {"type": "string", "description": "Accepted and ignored."},
        },
    },
    "Embedding": {
        "type": "object",
        "required": ["object", "index", "embedding"],
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer", "minimum": 0},
            "embedding": {
                "oneOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {
                        "type": "string",
                        "contentEncoding": "base64",
                        "description": "encoding_format base64: little-endian float32 values.",
                    },
                ]
            },
        },
    },
    "EmbeddingResponse": {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("Embedding")},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "total_tokens"],
                "properties": {
                    "prompt_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "By the model's tokenizer, else whitespace-separated words.",
                    },
                    "total_tokens": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "OpenAIModel": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer", "description": "Load time (Unix seconds)."},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": ref("OpenAIModel")},
        },
    },
    "ServerIndex": {
        "type": "object",
        "properties": {
            "server": {"type": "string"},
            "version": {"type": "string"},
            "models": {"type": "array", "items": {"type": "object"}},
        },
    },
}


def _tensor_schema(spec: TensorSpec, metadata: bool = False) -> dict[str, Any]:
    dims = len(spec.shape)
    return {
        "type": "object",
        "description": f"{spec.name}: {spec.datatype} [{', '.join(map(str, spec.shape))}]",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"const": spec.name},
            "datatype": {"const": spec.datatype},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "minItems": dims,
                "maxItems": dims,
            },
            "parameters": {"type": "object"},
            "data": {
                "type": "array",
                "items": {"anyOf": [_scalar_schema(spec.datatype), {"type": "array"}]},
            },
        },
    }


def model_components(
    key: str, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict[str, Any]:
    return {
        f"{key}.InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {
                    "type": "array",
                    "minItems": len(inputs),
                    "maxItems": len(inputs),
                    "items": {"oneOf": [_tensor_schema(spec) for spec in inputs]},
                },
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"enum": [spec.name for spec in outputs]},
                            "parameters": {"type": "object"},
                        },
                    },
                },
            },
        },
        f"{key}.InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {
                    "type": "array",
                    "items": {"oneOf": [_tensor_schema(spec) for spec in outputs]},
                },
            },
        },
    }
