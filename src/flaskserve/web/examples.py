"""Example requests and the playground widget, both derived from a model's signature.

The playground, the snippets and the OpenAPI document all show the same example, so one valid
request per model is built here: every `-1` dimension becomes 1 (2 for a list of sentences, so
an embedding model has something to compare), numbers are small, texts are short sentences. A
digits-like input (64 pixels in 0..16) gets a real handwritten 7 from scikit-learn's digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flaskserve.core.model import TensorSpec

#: `load_digits().images[7]`-style 8x8 pixels (0..16) of a handwritten 7, row by row.
SEVEN = [
    0, 0, 7, 8, 13, 16, 15, 1,
    0, 0, 7, 7, 4, 11, 12, 0,
    0, 0, 0, 0, 8, 13, 1, 0,
    0, 4, 8, 8, 15, 15, 6, 0,
    0, 2, 11, 15, 15, 4, 0, 0,
    0, 0, 0, 16, 5, 0, 0, 0,
    0, 0, 9, 15, 1, 0, 0, 0,
    0, 0, 13, 5, 0, 0, 0, 0,
]  # fmt: skip

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "The new movie is awful.",
]

_INTEGER = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
_FLOAT = {"FP16", "FP32", "FP64"}


@dataclass(frozen=True)
class Widget:
    """How the playground presents a model: `digits` (canvas), `text` (sentences) or `json`."""

    kind: str
    label_output: str | None = None
    probabilities_output: str | None = None
    embedding_output: str | None = None


def widget_for(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Widget:
    if _is_digits(name, inputs, outputs):
        label = next(s.name for s in outputs if s.datatype in _INTEGER and len(s.shape) == 1)
        probabilities = next(s.name for s in outputs if s.shape[-1:] == (10,))
        return Widget("digits", label_output=label, probabilities_output=probabilities)
    if len(inputs) == 1 and inputs[0].datatype == "BYTES" and len(inputs[0].shape) == 1:
        embedding = _embedding_output(outputs)
        return Widget("text", embedding_output=embedding)
    return Widget("json")


def _is_digits(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> bool:
    pixels = (
        len(inputs) == 1
        and inputs[0].datatype in _FLOAT
        and inputs[0].shape in ((-1, 64), (1, 64))
    )
    has_label = any(s.datatype in _INTEGER and len(s.shape) == 1 for s in outputs)
    has_probabilities = any(s.datatype in _FLOAT and s.shape[-1:] == (10,) for s in outputs)
    return pixels and has_label and has_probabilities and (
        name == "digits" or {s.name for s in outputs} >= {"label", "probabilities"}
    )


def _embedding_output(outputs: list[TensorSpec]) -> str | None:
    """The output holding one vector per sentence, when the model has exactly one such output."""
    vectors = [s for s in outputs if s.datatype in _FLOAT and len(s.shape) == 2 and s.shape[1] != 1]
    return vectors[0].name if len(outputs) == 1 and vectors else None


def example_shape(spec: TensorSpec) -> list[int]:
    if spec.datatype == "BYTES" and len(spec.shape) == 1 and spec.shape[0] == -1:
        return [2]
    return [1 if dim == -1 else dim for dim in spec.shape]


def example_data(spec: TensorSpec) -> list[Any]:
    shape = example_shape(spec)
    count = 1
    for dim in shape:
        count *= dim
    if spec.datatype == "BYTES":
        return [SENTENCES[i % len(SENTENCES)] for i in range(count)]
    if spec.datatype == "BOOL":
        return [i % 2 == 0 for i in range(count)]
    if spec.datatype in _FLOAT and shape[-1:] == [64]:
        return SEVEN * (count // 64)
    if spec.datatype in _INTEGER:
        return [i % 4 for i in range(count)]
    return [round(0.5 * (i % 4), 1) for i in range(count)]


def example_request(inputs: list[TensorSpec]) -> dict[str, Any]:
    """A valid V2 inference request for a model with these inputs."""
    return {
        "inputs": [
            {
                "name": spec.name,
                "shape": example_shape(spec),
                "datatype": spec.datatype,
                "data": example_data(spec),
            }
            for spec in inputs
        ]
    }


def example_instances(inputs: list[TensorSpec]) -> dict[str, Any]:
    """The same example as a V1 `{"instances": [...]}` request (one instance per row)."""
    rows = {spec.name: _rows(example_data(spec), example_shape(spec)) for spec in inputs}
    if len(inputs) == 1:
        return {"instances": rows[inputs[0].name]}
    count = min(len(r) for r in rows.values())
    return {"instances": [{name: r[i] for name, r in rows.items()} for i in range(count)]}


def _rows(flat: list[Any], shape: list[int]) -> list[Any]:
    """Nest `flat` (row-major) by `shape`; the outer list runs over the first dimension."""
    if len(shape) <= 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_rows(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def example_response(name: str, version: str, outputs: list[TensorSpec]) -> dict[str, Any]:
    """A V2 response of the shape the model answers (its values are placeholders)."""
    return {
        "model_name": name,
        "model_version": version,
        "outputs": [
            {
                "name": spec.name,
                "shape": example_shape(spec),
                "datatype": spec.datatype,
                "data": example_data(spec),
            }
            for spec in outputs
        ],
    }
