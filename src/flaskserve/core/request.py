"""One inference as every front door hands it to the data plane, and what comes back.

A front door (V2 HTTP, V1, SageMaker, OpenAI embeddings, gRPC) only translates its wire format:
it looks the model up through `DataPlane.lookup` (so an unknown or unavailable model is 404 or
503 whatever the body), holds what the request declares to `DataPlane.check` before decoding a
byte of payload, and hands the decoded arrays to `DataPlane.infer` as one `InferenceRequest`;
the `InferenceResult` it gets back is what it encodes. The model is looked up once and the
request checked once, on what it declared, whichever transport brought it.

A caller that builds arrays itself (the Python API, tests, benchmarks) leaves `checked` False:
the data plane then checks the decoded arrays, with the same function and limits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from flaskserve.core.context import InferenceContext
from flaskserve.core.model import Arrays, Model

#: No parameters, no datatypes: one shared read-only mapping, not a dict per request.
NOTHING: Mapping[str, Any] = MappingProxyType({})


def _python_context() -> InferenceContext:
    return InferenceContext("python")


def _nothing() -> Mapping[str, Any]:
    return NOTHING


@dataclass(slots=True)
class InferenceRequest:
    """What one inference asks of the data plane, in no transport's terms.

    The caller's identity (key id), the request id and the deadline travel in `context`, which
    the data plane's steps read and fill in (usage) while the request runs; the request itself
    is read, never changed, once made. (Not `frozen`: a frozen dataclass sets each field through
    `object.__setattr__`, which made one cost three times as much on the hot path.)
    """

    #: The model version the front door looked up (`DataPlane.lookup`).
    model: Model
    #: The decoded inputs, by input name.
    inputs: Mapping[str, np.ndarray]
    #: Each input's datatype as the request sent it (a missing one: the model's is assumed).
    datatypes: Mapping[str, str] = field(default_factory=_nothing)
    #: The output names the client asked for; None: all of the model's outputs.
    outputs: Sequence[str] | None = None
    context: InferenceContext = field(default_factory=_python_context)
    #: The version the client named (None: whichever the repository serves by default). If a
    #: version swap unloads `model` before it predicts, the request runs on what this names now.
    requested_version: str | None = None
    #: The request's own parameters (V2 and gRPC `parameters`), as the client sent them, for a
    #: model that reads them (`Model.takes_parameters`); other models never see them.
    parameters: Mapping[str, Any] = field(default_factory=_nothing)
    #: The front door held what the request declared to `DataPlane.check` for `model` before
    #: decoding it; False: the data plane checks the decoded arrays.
    checked: bool = False


class InferenceResult(NamedTuple):
    """The model version that answered (a version swap may have replaced the one looked up)
    and its outputs, conformed to its signature."""

    model: Model
    outputs: Arrays
