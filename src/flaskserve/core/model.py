"""The contract between the server and every runtime: a signature and a predict function.

A runtime hands the server a `Model`: named, versioned, with `TensorSpec`s for its inputs and
outputs, and a `predict` that maps input arrays to output arrays. Everything HTTP lives elsewhere;
everything library-specific lives in the runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from flaskserve.core.errors import ModelLoadError

#: The thirteen Open Inference Protocol datatypes and the numpy dtype each travels as.
#: BYTES tensors are numpy object arrays of `bytes`.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_DATATYPE_OF_DTYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype that carries `array` (strings and bytes travel as BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPE_OF_DTYPE[array.dtype]
    except KeyError:
        raise ValueError(
            f"numpy dtype {array.dtype} has no Open Inference Protocol datatype"
        ) from None


@dataclass(frozen=True)
class TensorSpec:
    """Name, datatype and shape of one model input or output; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __init__(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        datatype = str(datatype).upper()
        if datatype not in DATATYPES:
            raise ModelLoadError(
                f"tensor {name!r} has datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
            )
        dims = tuple(int(d) for d in shape)
        if any(d < -1 for d in dims):
            raise ModelLoadError(f"tensor {name!r} has shape {list(dims)}; dims must be >= -1")
        object.__setattr__(self, "name", str(name))
        object.__setattr__(self, "datatype", datatype)
        object.__setattr__(self, "shape", dims)

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def as_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_mapping(cls, entry: Mapping[str, Any]) -> TensorSpec:
        """Build from a `model.toml` table; missing keys become a load error naming the key."""
        missing = [key for key in ("name", "datatype", "shape") if key not in entry]
        if missing:
            raise ModelLoadError(f"tensor entry {dict(entry)} lacks {', '.join(missing)}")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise ModelLoadError(f"tensor {entry['name']!r}: shape must be a list of integers")
        return cls(entry["name"], entry["datatype"], shape)


#: Alias used in the decorator API: `Tensor("x", "FP32", [-1, 4])`.
Tensor = TensorSpec

Arrays = dict[str, np.ndarray]

#: A request's `parameters` when it sent none: one shared read-only mapping.
NO_PARAMETERS: Mapping[str, Any] = MappingProxyType({})

#: Why a generation ended: a stop condition (end-of-text token or a `stop` string), its
#: `max_tokens`, or a failure inside the model.
FINISH_REASONS = ("stop", "length", "error")


@dataclass(frozen=True)
class GenerationRequest:
    """What a client asks a generative model for, whatever front door it came through.

    Exactly one of `prompt` (plain text) and `messages` (a chat: dicts with `role` and `content`,
    rendered by the model's chat template) is set. `max_tokens` None means the model's limit;
    `temperature` 0 means greedy; `stop` strings end the text before them.
    """

    prompt: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TextEvent:
    """One step of a generation: the text made since the previous event (possibly empty) and
    the counts so far. The last event of a stream carries `finish_reason`."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


#: A running generation. Its consumer either reads it to the end or calls `close()` on it (a
#: client went away): closing stops the generation and frees its place in the model's batch.
TextStream = Iterator[TextEvent]


@dataclass
class Model:
    """A loaded, ready-to-call model version.

    `predict` receives one array per input (already checked against `inputs`) and returns one array
    per output. It may be called from several threads at once; runtimes whose libraries are not
    thread-safe guard themselves. `max_batch_size` > 0 says the first dimension of every input and
    output is a batch dimension that the server may concatenate requests along.

    `chunk_rows` > 0, set by runtimes whose models treat rows independently, is the most rows
    one `predict` call gets: the server runs a larger request in consecutive chunks of that many
    rows and concatenates their outputs (`core.batching.predict_chunked`), so the memory a
    request costs depends on the chunk, not on the request. 0: every request in one call.

    `count_tokens`, where a runtime holds the model's tokenizer, says how many tokens the model
    reads for a list of texts (what the OpenAI embeddings route reports as usage); runtimes
    without one leave it None. `loaded_at` (seconds since the epoch) is when it was loaded.

    `generate_fn`, set on a generative (streaming) model, starts a generation and returns its
    `TextStream` (a generator, so `close()` cancels it); such a model also answers `predict`
    with the whole text, for the request/response front doors.

    `takes_parameters`: `predict_fn` reads the request's own `parameters` (V2 and gRPC), given
    as its second argument; requests batched together then share equal parameters. Set by the
    Python runtime for a `predict` that declares a `parameters` keyword; every other model is
    called with its inputs alone, whatever the request's parameters.
    """

    name: str
    version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: `predict_fn(inputs)`, or `predict_fn(inputs, parameters)` when `takes_parameters`.
    predict_fn: Callable[..., Mapping[str, Any]]
    platform: str = "python"
    max_batch_size: int = 0
    max_delay_ms: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    unload_fn: Callable[[], None] | None = None
    count_tokens: Callable[[list[str]], int] | None = None
    loaded_at: float = field(default_factory=time.time)
    chunk_rows: int = 0
    generate_fn: Callable[[GenerationRequest], TextStream] | None = None
    takes_parameters: bool = False

    def __post_init__(self) -> None:
        self.input_by_name = {spec.name: spec for spec in self.inputs}
        self.output_by_name = {spec.name: spec for spec in self.outputs}
        if len(self.input_by_name) != len(self.inputs):
            raise ModelLoadError(f"model {self.name!r} declares the same input name twice")
        if len(self.output_by_name) != len(self.outputs):
            raise ModelLoadError(f"model {self.name!r} declares the same output name twice")

    def predict(self, inputs: Arrays, parameters: Mapping[str, Any] = NO_PARAMETERS) -> Arrays:
        """The outputs for `inputs`; `parameters` (the request's) reach only a model that
        `takes_parameters`."""
        if self.takes_parameters:
            return dict(self.predict_fn(inputs, parameters))
        return dict(self.predict_fn(inputs))

    @property
    def generative(self) -> bool:
        """Whether this model streams text (`generate` works)."""
        return self.generate_fn is not None

    def generate(self, request: GenerationRequest) -> TextStream:
        if self.generate_fn is None:
            raise TypeError(f"model {self.name!r} is not a generative model")
        return self.generate_fn(request)

    def unload(self) -> None:
        if self.unload_fn is not None:
            self.unload_fn()
