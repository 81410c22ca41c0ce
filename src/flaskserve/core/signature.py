"""Checks that a request fits a model's signature, and that a model's answer fits it too.

Requests are checked before any model code runs, so a wrong name, datatype or shape is a 400 that
names the model's expectation instead of an exception from deep inside a library. The shapes a
request declares are checked (`check_signature`, called by `core.declared.check_request`) before
its tensors are decoded. Outputs are cast to their declared datatype, so a runtime returning
float64 still answers the FP32 it promised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from flaskserve.core.errors import InferenceFailed, InvalidInput
from flaskserve.core.model import Arrays, Model, TensorSpec


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_signature(
    model: Model, shapes: Mapping[str, Sequence[int]], datatypes: Mapping[str, str]
) -> None:
    """Raise `InvalidInput` unless the declared inputs are exactly the model's, in datatype and
    shape; checked before any tensor is decoded, so a request that cannot fit the model costs no
    arrays (an 8 MiB BYTES tensor sent to an FP32 model is a dictionary lookup, not 1.7 million
    bytes objects). `datatypes` holds what the client declared on the wire."""
    specs = model.input_by_name
    for name in shapes:
        if name not in specs:
            raise InvalidInput(
                f"model {model.name!r} has no input {name!r}; its inputs are "
                f"{', '.join(specs) or '(none)'}"
            )
    if len(shapes) != len(specs):
        missing = [name for name in specs if name not in shapes]
        raise InvalidInput(f"model {model.name!r} needs input(s) {', '.join(missing)}")
    check_datatypes(model, datatypes)
    for name, shape in shapes.items():
        spec = specs[name]
        if not shape_fits(shape, spec.shape):
            raise InvalidInput(
                f"input {name!r} has shape {_shape_text(shape)} but model "
                f"{model.name!r} expects {_shape_text(spec.shape)} (-1 means any size)"
            )


def check_datatypes(model: Model, datatypes: Mapping[str, str]) -> None:
    """Raise `InvalidInput` unless each input in `datatypes` (name -> the datatype the client
    declared) is declared with `model`'s datatype for it; names the model has no input for are
    left to `check_signature`, so a caller may check the datatypes alone (a generation stream,
    whose sampling settings travel as inputs outside the signature)."""
    specs = model.input_by_name
    for name, declared in datatypes.items():
        spec = specs.get(name)
        if spec is not None and declared != spec.datatype:
            raise InvalidInput(
                f"input {name!r} is {declared} but model {model.name!r} expects {spec.datatype}"
            )


def check_output_names(model: Model, names: Iterable[str]) -> None:
    for name in names:
        if name not in model.output_by_name:
            raise InvalidInput(
                f"model {model.name!r} has no output {name!r}; its outputs are "
                f"{', '.join(model.output_by_name)}"
            )


def shape_fits(shape: Sequence[int], expected: Sequence[int]) -> bool:
    if len(shape) != len(expected):
        return False
    return all(want == -1 or want == got for got, want in zip(shape, expected, strict=True))


def conform_outputs(model: Model, outputs: Mapping[str, Any]) -> Arrays:
    """Arrays for every declared output, cast to its datatype; a model that breaks its promise
    fails with a message about the model, not the request."""
    result: Arrays = {}
    for spec in model.outputs:
        if spec.name not in outputs:
            raise InferenceFailed(
                f"model {model.name!r} returned no output {spec.name!r} "
                f"(it returned {', '.join(outputs) or 'nothing'})"
            )
        result[spec.name] = _as_datatype(model, spec, outputs[spec.name])
    return result


def _as_datatype(model: Model, spec: TensorSpec, value: Any) -> np.ndarray:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if spec.datatype == "BYTES":
        if array.dtype.kind in "SU":
            return array.astype(object)
        return array
    if array.dtype != spec.dtype:
        try:
            array = array.astype(spec.dtype)
        except (TypeError, ValueError):
            raise InferenceFailed(
                f"model {model.name!r} returned output {spec.name!r} that cannot be "
                f"converted to {spec.datatype}"
            ) from None
    return array
