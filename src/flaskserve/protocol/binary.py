"""Triton's binary tensor data extension: raw little-endian tensors after the JSON header.

Numeric tensors are their bytes, row major, no padding; BOOL is one byte per element; each BYTES
element is a 4-byte little-endian length followed by its bytes. Sizes are checked against the
declared shape before any array is made, and arrays are views of the request body (no copy).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from flaskserve.core.errors import InvalidInput
from flaskserve.core.model import DATATYPES
from flaskserve.protocol.codec import element_count

_LENGTH = struct.Struct("<I")


def decode_binary_tensor(
    name: str, shape: Sequence[int], datatype: str, chunk: memoryview
) -> np.ndarray:
    """The array of `shape` in `chunk`; the shape is one `core.declared.declare` accepted."""
    shape = list(shape)
    count = element_count(shape)
    if datatype == "BYTES":
        return _decode_bytes(name, shape, count, chunk)
    dtype = DATATYPES[datatype].newbyteorder("<")
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInput(
            f"input {name!r}: shape {shape} of {datatype} needs {expected} bytes of binary data "
            f"but binary_data_size is {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _decode_bytes(name: str, shape: list[int], count: int, chunk: memoryview) -> np.ndarray:
    if count > len(chunk) // _LENGTH.size:
        raise InvalidInput(
            f"input {name!r}: {len(chunk)} bytes cannot hold {count} BYTES elements "
            "(each needs a 4-byte length)"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + _LENGTH.size > len(chunk):
            raise InvalidInput(
                f"input {name!r}: binary BYTES data ends after {i} of {count} elements"
            )
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size
        if offset + length > len(chunk):
            raise InvalidInput(
                f"input {name!r}: element {i} declares {length} bytes but only "
                f"{len(chunk) - offset} remain"
            )
        out[i] = bytes(chunk[offset : offset + length])
        offset += length
    if offset != len(chunk):
        raise InvalidInput(
            f"input {name!r}: {len(chunk) - offset} bytes are left over after "
            f"{count} BYTES elements"
        )
    return out.reshape(shape)


def encode_binary_tensor(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1):
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
