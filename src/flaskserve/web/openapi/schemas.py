"""The OpenAPI building blocks: response and media helpers, the shared component schemas, and
the schemas generated from one model's signature."""

from __future__ import annotations

from typing import Any

from flaskserve.core.model import DATATYPES, TensorSpec

_INTEGER = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {key: {"value": value} for key, value in examples.items()}
    return {"application/json": media}


def answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = json_content(schema)
    return response


def text(description: str, media_type: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def operation(tag: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"tags": [tag], "summary": summary, "responses": responses, **extra}


ERROR = ref("Error")
ERRORS = {
    "400": answer("The request is malformed or does not fit the model's signature.", ERROR),
    "404": answer("Unknown model or version.", ERROR),
    "503": answer("The model is not ready (failed to load, or unloaded).", ERROR),
}


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
