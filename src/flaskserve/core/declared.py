"""What a request declares, checked once for every front door before any of its data is decoded.

Every transport (V2 JSON and binary, V1 instances, SageMaker CSV, OpenAI `input`, gRPC raw and
typed contents) first turns its wire format into `DeclaredTensor`s: a name, a datatype and the
shape the request claims, read from the V2 `shape`, the gRPC `shape`, `len(instances)`, the CSV
line count or `len(input)`. Making one already refuses a shape no array can take (negative sizes,
more than 64 dimensions, more elements than memory can address even when a dimension is 0).
`check_request` then holds the declared tensors against the model's signature and against the
`RequestLimits` (rows per request, elements per input), and only a request that passes is
decoded. A request for 200,000 rows costs its header, not 200,000 decoded rows and a model run
that would take the worker's memory; and HTTP and gRPC refuse the same shapes by construction,
since they call the same function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import InvalidInput, RequestTooLarge
from flaskserve.core.model import DATATYPES, Model
from flaskserve.core.signature import check_output_names, check_signature

#: numpy's limits: at most 64 dimensions, and the product of the non-zero dimensions times the
#: item size must fit a signed 64-bit size (it checks this even for an empty array).
MAX_DIMS = 64
_MAX_BYTES = 2**63 - 1
#: Rows (first dimension) one request may carry by default (`--max-batch-rows`). OpenAI caps an
#: embeddings `input` at 2,048 items; twice that leaves room for every client batch we know of (a
#: 2,000-sentence embedding request, Triton clients' batches of a few hundred), while a model is
#: handed thousands of rows at most, not the 200,000 that 2 MB of JSON can declare.
DEFAULT_MAX_ROWS = 4096
#: Every transport's refusal of a request without inputs (a V2 body, a gRPC message).
NO_INPUTS = "the inference request needs a non-empty 'inputs' list"
HOW_TO_RAISE = (
    "send the rows in several requests, or raise the limit with `max_request_rows` in the "
    "model's model.toml or the server's --max-batch-rows"
)


class DeclaredTensor(NamedTuple):
    """One input as the request declares it; `declare` makes one only for a shape an array can
    take. (A tuple: one is made for every input of every request, so it must cost next to
    nothing.)"""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        """Inference items: the first dimension (a scalar is one)."""
        return self.shape[0] if self.shape else 1

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


def declare(name: str, datatype: str, shape: Sequence[int]) -> DeclaredTensor:
    """The declared tensor, or a 400 naming what no array of this datatype can be."""
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"input {name!r}: unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        )
    dims = tuple(shape)
    if len(dims) > MAX_DIMS:
        raise InvalidInput(
            f"input {name!r} has {len(dims)} dimensions; an array has at most {MAX_DIMS}"
        )
    if any(dim < 0 for dim in dims):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of non-negative integers, got {list(dims)}"
        )
    size = DATATYPES[datatype].itemsize
    for dim in dims:
        if dim:
            size *= dim
            if size > _MAX_BYTES:
                raise InvalidInput(
                    f"input {name!r}: shape {list(dims)} is larger than any array can be"
                )
    return DeclaredTensor(name, datatype, dims)


def declared_arrays(
    inputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str]
) -> list[DeclaredTensor]:
    """Decoded arrays as declared tensors, for callers that hand the data plane arrays directly;
    their datatype is the one sent on the wire (none: the model's is assumed)."""
    return [
        DeclaredTensor(name, datatypes.get(name, ""), array.shape) for name, array in inputs.items()
    ]


@dataclass(frozen=True)
class RequestLimits:
    """How much one request may ask for. `max_rows` (0: no limit) is the server's default, which
    a model's `max_request_rows` replaces; `max_elements` bounds each input's declared element
    count (every element takes at least one byte on any wire, so a count above the body limit
    can only be a lie about the data)."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_elements: int = 64 * 1024 * 1024

    def rows_for(self, config: ModelConfig | None) -> int:
        if config is not None and config.max_request_rows is not None:
            return config.max_request_rows
        return self.max_rows


def check_request(
    model: Model,
    tensors: Iterable[DeclaredTensor],
    outputs: Sequence[str] | None,
    limits: RequestLimits,
    max_rows: int,
) -> None:
    """Raise unless the declared request fits `model`'s signature and the limits: 400 for a
    signature mismatch, 413 for more rows (over `max_rows`, 0: none) or elements than allowed."""
    shapes: dict[str, Sequence[int]] = {}
    datatypes: dict[str, str] = {}
    for tensor in tensors:
        shapes[tensor.name] = tensor.shape
        if tensor.datatype:
            datatypes[tensor.name] = tensor.datatype
    check_signature(model, shapes, datatypes)
    if outputs:
        check_output_names(model, outputs)
    for name, shape in shapes.items():
        rows = shape[0] if shape else 1
        if max_rows and rows > max_rows:
            raise RequestTooLarge(
                f"input {name!r} has {rows} rows but model {model.name!r} takes at most "
                f"{max_rows} per request; {HOW_TO_RAISE}"
            )
        elements = math.prod(shape)
        if elements > limits.max_elements:
            raise RequestTooLarge(
                f"input {name!r} declares shape {list(shape)}, {elements} elements, but a "
                f"request may carry at most {limits.max_elements} per input (one per byte of "
                "--max-request-bytes); send fewer elements per request"
            )
