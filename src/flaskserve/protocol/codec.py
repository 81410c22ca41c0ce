"""JSON tensors <-> numpy arrays, checked on the way in so bad requests fail fast and clearly.

A request tensor declares its shape and datatype and carries its data flat or nested. Everything a
client can get wrong is caught here with a message naming the tensor and what to fix: the header
becomes a `DeclaredTensor` (which refuses a shape no numpy array can take), and the declared size
is compared with the data before anything is allocated, so a request claiming a shape of
[10**12] costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from flaskserve.core.declared import DeclaredTensor, declare
from flaskserve.core.errors import InvalidInput
from flaskserve.core.model import DATATYPES, datatype_of

_INT_DATATYPES = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}


def loads(body: bytes) -> Any:
    """Parse a JSON body, turning every parse failure into a 400 that says where it broke."""
    if not body:
        raise InvalidInput("request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_shape(name: str, shape: Any) -> list[int]:
    """A JSON shape as a list of integers (their range is `declare`'s to check)."""
    if not isinstance(shape, list) or not all(type(dim) is int for dim in shape):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    return shape


def parse_datatype(name: str, datatype: Any) -> str:
    if not isinstance(datatype, str):
        raise InvalidInput(
            f"input {name!r}: unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        )
    return datatype


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def tensor_header(entry: Any, index: int) -> DeclaredTensor:
    """The name, shape and datatype of one request tensor (JSON or binary), once an array of
    that shape and datatype can exist at all."""
    if not isinstance(entry, dict):
        raise InvalidInput(f"inputs[{index}] must be an object with name, shape, datatype and data")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}] has no 'name' string")
    if "shape" not in entry:
        raise InvalidInput(f"input {name!r} has no 'shape'")
    if "datatype" not in entry:
        raise InvalidInput(f"input {name!r} has no 'datatype'")
    shape = parse_shape(name, entry["shape"])
    return declare(name, parse_datatype(name, entry["datatype"]), shape)


def decode_json_data(
    name: str, shape: Sequence[int], datatype: str, data: Any
) -> np.ndarray:
    """Turn the `data` of a JSON tensor into an array of `shape` and `datatype`."""
    shape = list(shape)
    count = element_count(shape)
    if not isinstance(data, list):
        if count == 1 and not isinstance(data, dict):
            data = [data]
        else:
            raise InvalidInput(f"input {name!r}: 'data' must be a list of {count} values")
    if data and isinstance(data[0], list):
        data = _flatten(name, data, count)
    if len(data) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {count} values but 'data' has {len(data)}"
        )
    if count == 0:
        return np.empty(shape, dtype=DATATYPES[datatype])
    if datatype == "BYTES":
        flat = _bytes_array(name, data)
    else:
        flat = _numeric_array(name, datatype, data)
    return flat.reshape(shape)


def _flatten(name: str, data: list[Any], limit: int) -> list[Any]:
    """Flatten nested lists depth-first; stop early once more values than `limit` are seen."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
            if len(flat) > limit:
                return flat
        else:
            stack.pop()
    return flat


def _numeric_array(name: str, datatype: str, data: list[Any]) -> np.ndarray:
    target = DATATYPES[datatype]
    try:
        parsed = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        parsed = np.asarray(data, dtype=object)
    kind = parsed.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidInput(f"input {name!r}: BOOL data must be true/false values")
        return parsed
    if datatype in _INT_DATATYPES:
        if kind not in "iub":
            if not all(type(value) is int for value in data):
                raise InvalidInput(
                    f"input {name!r}: {datatype} data must be integers, found {_describe(parsed)}"
                )
            # Mixed magnitudes beyond int64 (UINT64's top half) keep exact Python ints.
            parsed = np.array(data, dtype=object)
        info = np.iinfo(target)
        if parsed.size and (parsed.min() < info.min or parsed.max() > info.max):
            raise InvalidInput(
                f"input {name!r}: values must lie in [{info.min}, {info.max}] for {datatype}"
            )
        return parsed.astype(target, copy=False)
    if kind not in "iufb":
        raise InvalidInput(
            f"input {name!r}: {datatype} data must be numbers, found {_describe(parsed)}"
        )
    with np.errstate(over="ignore"):
        converted = parsed.astype(target, copy=False)
    # A finite number that became infinite is one the datatype cannot hold (NaN or inf sent on
    # purpose, as CSV can, pass through to the model).
    if not np.isfinite(converted).all() and (np.isfinite(parsed) & ~np.isfinite(converted)).any():
        raise InvalidInput(
            f"input {name!r}: a value is too large for {datatype} (at most "
            f"{float(np.finfo(target).max):.6g} in magnitude)"
        )
    return converted


def _describe(parsed: np.ndarray) -> str:
    if parsed.dtype.kind == "f":
        return "non-integer numbers"
    for value in parsed.ravel():
        if not isinstance(value, int | float) or isinstance(value, bool):
            # numpy's scalars print as np.str_('a'): name the Python value the client sent.
            plain = value.item() if isinstance(value, np.generic) else value
            kind = "text" if isinstance(plain, str) else f"{type(plain).__name__} value"
            return f"{kind} {plain!r}"[:80]
    return f"values of type {parsed.dtype}"


def _bytes_array(name: str, data: list[Any]) -> np.ndarray:
    out = np.empty(len(data), dtype=object)
    for i, value in enumerate(data):
        if isinstance(value, str):
            out[i] = value.encode("utf-8")
        elif isinstance(value, bytes):
            out[i] = value
        else:
            raise InvalidInput(
                f"input {name!r}: BYTES data must be strings, found {type(value).__name__}"
            )
    return out


def encode_json_output(name: str, array: np.ndarray) -> dict[str, Any]:
    """One response tensor with its data flat, as the protocol's JSON form."""
    datatype = datatype_of(array)
    flat = np.ascontiguousarray(array).reshape(-1)
    data: Any
    if datatype == "BYTES":
        data = [_text(value) for value in flat]
    elif datatype == "FP16":
        data = flat.astype(np.float32)
    else:
        data = flat
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
