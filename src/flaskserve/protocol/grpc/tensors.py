"""gRPC tensors <-> numpy arrays: `raw_input_contents` or typed `contents` in, raw bytes out.

A request is read in two steps, as over HTTP: `declare_inputs` reads each input's name, datatype
and shape into a `DeclaredTensor` (refusing a shape no array can take), which the data plane
checks (signature, row and element limits) before `decode_request` touches the payload. Raw
tensors use the same layout as the binary tensor data extension over HTTP (little-endian,
row major; BYTES elements as a 4-byte length and the bytes), so they decode with the same code
and the same checks. Typed contents are checked against the declared shape before an array is
made, and narrow integer types against their range, since the protocol carries INT8/16 in
int32 fields and UINT8/16 in uint32 fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flaskserve.core.declared import NO_INPUTS, DeclaredTensor, declare
from flaskserve.core.errors import InvalidInput
from flaskserve.core.model import DATATYPES, Arrays, Model, datatype_of
from flaskserve.protocol.binary import decode_binary_tensor, encode_binary_tensor
from flaskserve.protocol.codec import element_count
from flaskserve.protocol.grpc import messages

#: The `InferTensorContents` field each datatype's typed values travel in (FP16 has none).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_NARROW = {"UINT8", "UINT16", "INT8", "INT16"}


@dataclass
class DecodedRequest:
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[str] | None
    parameters: dict[str, Any]


def declare_inputs(request: Any) -> list[DeclaredTensor]:
    """Each input of a `ModelInferRequest` as it declares itself; nothing is decoded."""
    if not request.inputs:
        raise InvalidInput(NO_INPUTS)
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(request.inputs)} inputs; send one per input, in order"
        )
    declared: list[DeclaredTensor] = []
    seen: set[str] = set()
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{index}] has no name")
        if name in seen:
            raise InvalidInput(f"input {name!r} appears twice in 'inputs'")
        seen.add(name)
        if raw and tensor.HasField("contents"):
            raise InvalidInput(
                f"input {name!r} has typed contents and raw_input_contents is used; "
                "send every input one way"
            )
        if not raw and tensor.datatype == "FP16":
            raise InvalidInput(
                f"input {name!r}: FP16 has no typed contents field; send it in raw_input_contents"
            )
        declared.append(declare(name, tensor.datatype, tensor.shape))
    return declared


def requested_outputs(request: Any) -> list[str] | None:
    """The output names a `ModelInferRequest` asks for; None: all."""
    return [output.name for output in request.outputs] or None


def decode_request(request: Any, declared: Sequence[DeclaredTensor]) -> DecodedRequest:
    """The arrays of a `ModelInferRequest` whose `declare_inputs` the data plane checked."""
    raw = request.raw_input_contents
    inputs: dict[str, np.ndarray] = {}
    for index, (tensor, spec) in enumerate(zip(request.inputs, declared, strict=True)):
        if raw:
            inputs[spec.name] = decode_binary_tensor(
                spec.name, spec.shape, spec.datatype, memoryview(raw[index])
            )
        else:
            inputs[spec.name] = _decode_contents(
                spec.name, list(spec.shape), spec.datatype, tensor.contents
            )
    datatypes = {spec.name: spec.datatype for spec in declared}
    return DecodedRequest(inputs, datatypes, requested_outputs(request), parameters_of(request))


def parameters_of(request: Any) -> dict[str, Any]:
    """The request's `parameters` as plain values (an `InferParameter` holds one bool, int,
    float or string); one with none set is left out."""
    if not request.parameters:
        return {}
    values: dict[str, Any] = {}
    for key, value in request.parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(value, kind)
    return values


def _decode_contents(name: str, shape: list[int], datatype: str, contents: Any) -> np.ndarray:
    field = CONTENTS_FIELD[datatype]  # every datatype but FP16, which `declare_inputs` refuses
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} values but contents.{field} has "
            f"{len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    target = DATATYPES[datatype]
    if datatype in _NARROW:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(target)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(
                f"input {name!r}: values must lie in [{info.min}, {info.max}] for {datatype}"
            )
        return wide.astype(target).reshape(shape)
    return np.asarray(values, dtype=target).reshape(shape)


def encode_response(
    model: Model, outputs: Arrays, requested: list[str] | None, request_id: str
) -> Any:
    """A `ModelInferResponse` carrying every requested output (all when none was named) as
    raw bytes, the way Triton answers."""
    response = messages.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request_id
    )
    names = requested or [spec.name for spec in model.outputs]
    raw = []
    for name in names:
        array = outputs[name]
        datatype = datatype_of(array)
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        raw.append(encode_binary_tensor(array, datatype))
    response.raw_output_contents.extend(raw)
    return response
