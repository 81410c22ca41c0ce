"""What one inference carries through the data plane besides its tensors.

Every front door (the HTTP routes, the gRPC servicer) builds an `InferenceContext` for the
request it serves and hands it to `DataPlane.infer`; the data plane's steps read it (the key id,
the arrival time) and fill it in (the deadline, the usage to meter). Nothing on the inference
path reads a web framework's globals, so the same steps serve every protocol.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from flaskserve.core.model import Model

#: A client's request id is kept when it is short printable ASCII (it lands in logs verbatim).
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def new_request_id() -> str:
    """32 random hex digits (what uuid4().hex gives, without building a UUID object)."""
    return os.urandom(16).hex()


def request_id_from(given: str | None) -> str:
    """The client's request id when it sent a sensible one, else a fresh one."""
    return given if given and _VALID_REQUEST_ID.fullmatch(given) else new_request_id()


@dataclass(slots=True)
class InferenceContext:
    """One request's facts, given by its front door and filled in by the data plane's steps."""

    protocol: str
    request_id: str = "-"
    #: The API key the request was admitted with (None without keys).
    key_id: str | None = None
    #: `time.monotonic()` when the request arrived, before any wait for a worker thread (an
    #: HTTP request's: when the engine queued it, `RequestState.queued`).
    arrived: float = field(default_factory=time.monotonic)
    #: `time.monotonic()` after which nobody waits for this request; the client's own, then the
    #: sooner of it and the server's (`Deadline` step).
    deadline: float | None = None
    #: Usage, filled once the inference ended: the model that answered (None if it failed),
    #: the rows it was asked for and the seconds it took.
    served: Model | None = None
    rows: int = 0
    compute: float = 0.0
    #: Tokens a generation read and wrote (what a generative model bills), filled as it runs,
    #: so a stream cut short is billed for what it sent.
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Step(Protocol):
    """A cross-cutting step of every inference, given to `DataPlane` at construction."""

    def before(
        self, context: InferenceContext, name: str, inputs: Mapping[str, np.ndarray]
    ) -> None:
        """Runs before the model is looked up; raise a `FlaskServeError` to refuse the request."""

    def after(
        self,
        context: InferenceContext,
        model: Model | None,
        inputs: Mapping[str, np.ndarray],
        seconds: float,
    ) -> None:
        """Runs once the inference ended: `model` answered, or it failed (`model` is None)."""



class BaseStep:
    """A step that does nothing before and nothing after: subclass it and override the half
    you need."""

    def before(
        self, context: InferenceContext, name: str, inputs: Mapping[str, np.ndarray]
    ) -> None:
        return None

    def after(
        self,
        context: InferenceContext,
        model: Model | None,
        inputs: Mapping[str, np.ndarray],
        seconds: float,
    ) -> None:
        return None

#: Triton's statistics (`{"model_stats": [...]}`) of every model, of one model, or of one of its
#: versions; the protocols are handed one (by the app) rather than importing where it is kept.
StatisticsReport = Callable[[str | None, str | None], dict[str, Any]]
