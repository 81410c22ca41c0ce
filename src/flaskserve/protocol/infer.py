"""Open Inference Protocol V2 inference requests and responses, JSON and binary.

`parse_infer_request` turns a body (and the `Inference-Header-Content-Length` header, if any) into
arrays; `encode_infer_response` does the reverse, returning binary tensors where the client asked
for them (`binary_data` on an output, or `binary_data_output` on the request).

Parsing reads every tensor's header first (name, shape, datatype, where its data lies) and hands
the declared tensors to `check` (the data plane's: the model's signature and the request limits)
before a single tensor is decoded: a request that cannot fit the model, or asks for more rows
than it may, costs its JSON header, not its data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flaskserve.core.declared import NO_INPUTS, DeclaredTensor
from flaskserve.core.errors import InvalidInput
from flaskserve.core.model import Arrays, Model, datatype_of
from flaskserve.protocol.binary import decode_binary_tensor, encode_binary_tensor
from flaskserve.protocol.codec import (
    decode_json_data,
    dumps,
    encode_json_output,
    loads,
    tensor_header,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
#: Checks the declared inputs and the requested output names before anything is decoded (the
#: data plane's `check`, for the model the door looked up); raises to refuse them.
Check = Callable[[Sequence[DeclaredTensor], Sequence[str] | None], None]


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    #: The request's own parameters, for the model (`binary_data_output` is the server's).
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _WireTensor:
    """One request tensor before decoding: its data is JSON values or a slice of the body."""

    declared: DeclaredTensor
    data: Any = None
    chunk: memoryview | None = None

    def decode(self) -> np.ndarray:
        name, shape, datatype = self.declared.name, self.declared.shape, self.declared.datatype
        if self.chunk is not None:
            return decode_binary_tensor(name, shape, datatype, self.chunk)
        return decode_json_data(name, shape, datatype, self.data)


def parse_infer_request(
    body: bytes, header_length: str | None = None, check: Check | None = None
) -> InferRequest:
    """The request in `body`; with `check`, its declared inputs and requested outputs are
    checked (signature, limits) before any tensor is decoded."""
    if header_length is not None:
        json_length = _json_length(header_length, len(body))
        request = loads(body[:json_length])
        binary = memoryview(body)[json_length:]
    else:
        request = loads(body)
        binary = memoryview(b"")
    if not isinstance(request, dict):
        raise InvalidInput("the inference request must be a JSON object with an 'inputs' list")
    tensors = _wire_tensors(request, binary)
    request_parameters = _parameters(request, "the request")
    parsed = InferRequest(
        inputs={},
        datatypes={t.declared.name: t.declared.datatype for t in tensors},
        id=_request_id(request.get("id")),
        outputs=_requested_outputs(request.get("outputs")),
        binary_output=request_parameters.get("binary_data_output") is True,
        parameters=_model_parameters(request_parameters),
    )
    if check is not None:
        check([tensor.declared for tensor in tensors], output_names(parsed))
    parsed.inputs = {tensor.declared.name: tensor.decode() for tensor in tensors}
    return parsed


def _wire_tensors(request: dict[str, Any], binary: memoryview) -> list[_WireTensor]:
    """Every input's header, with its binary slice checked against the body; nothing decoded."""
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput(NO_INPUTS)
    tensors: list[_WireTensor] = []
    seen: set[str] = set()
    offset = 0
    for index, entry in enumerate(raw_inputs):
        declared = tensor_header(entry, index)
        name = declared.name
        if name in seen:
            raise InvalidInput(f"input {name!r} appears twice in 'inputs'")
        seen.add(name)
        size = _parameters(entry, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInput(
                    f"input {name!r}: binary_data_size must be a non-negative integer"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes remain); check "
                    f"{HEADER_LENGTH} and the sizes"
                )
            tensors.append(_WireTensor(declared, chunk=binary[offset : offset + size]))
            offset += size
        elif "data" in entry:
            tensors.append(_WireTensor(declared, data=entry["data"]))
        else:
            raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims"
        )
    return tensors


def _json_length(header: str, body_length: int) -> int:
    try:
        length = int(header)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {header!r}") from None
    if not 0 < length <= body_length:
        raise InvalidInput(f"{HEADER_LENGTH} is {length} but the body has {body_length} bytes")
    return length


def _parameters(entry: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = entry.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' of {where} must be an object")
    return parameters


def _model_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters a model may read: all but the binary extension's
    `binary_data_output`, which is the server's (`tritonclient.http` sends it on every call)."""
    if "binary_data_output" not in parameters:
        return parameters
    return {name: value for name, value in parameters.items() if name != "binary_data_output"}


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("'id' must be a string")
    return value


def _requested_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    requested = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidInput("each entry of 'outputs' must be an object with a 'name' string")
        binary = _parameters(entry, f"output {entry['name']!r}").get("binary_data")
        requested.append(
            RequestedOutput(entry["name"], binary if isinstance(binary, bool) else None)
        )
    return requested


def output_names(request: InferRequest) -> list[str] | None:
    return [output.name for output in request.outputs] if request.outputs else None


def _selected(model: Model, request: InferRequest) -> list[RequestedOutput]:
    if request.outputs:
        return request.outputs
    return [RequestedOutput(spec.name) for spec in model.outputs]


def encode_infer_response(
    model: Model, outputs: Arrays, request: InferRequest
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    entries = []
    chunks: list[bytes] = []
    for output in _selected(model, request):
        array = outputs[output.name]
        binary = request.binary_output if output.binary is None else output.binary
        if binary:
            datatype = datatype_of(array)
            raw = encode_binary_tensor(array, datatype)
            chunks.append(raw)
            entries.append(
                {
                    "name": output.name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        else:
            entries.append(encode_json_output(output.name, array))
    response: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": entries,
    }
    if request.id is not None:
        response["id"] = request.id
    header = dumps(response)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
