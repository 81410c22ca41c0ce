"""The protocol-neutral data plane: every front door (V2, V1, SageMaker, OpenAI, gRPC) ends up
here.

A front door looks the model up once (`lookup`: 404 or 503 whatever the body), reads its wire
format into `DeclaredTensor`s and calls `check`, which holds what the request declares against
the model's signature and the `RequestLimits` (rows, elements) before any payload is decoded;
then it decodes and calls `infer` with one `InferenceRequest` (`core.request`). `infer` runs the
cross-cutting steps it was built with (the deadline, usage: see `Step`), checks the decoded
arrays with the same `check_request` only for callers that did not declare them (the Python
API), runs the model and conforms the outputs. `infer` is the whole sequence; nothing wraps or
replaces it. A failure inside a model raises `ModelFailed`, which carries the exception
for the front door to log with the request id; the client hears only its type.

Models whose `max_batch_size` > 0 run through one `Batcher` per model version, created on the
version's first request and closed when the repository says it unloaded that version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from flaskserve.core import deadlines
from flaskserve.core.batching import Batcher, run_model
from flaskserve.core.context import Step
from flaskserve.core.declared import DeclaredTensor, RequestLimits, check_request, declared_arrays
from flaskserve.core.errors import ModelNotReady
from flaskserve.core.model import NO_PARAMETERS, Arrays, Model
from flaskserve.core.repository import ModelEntry, ModelRepository
from flaskserve.core.request import InferenceRequest, InferenceResult
from flaskserve.version import __version__

log = logging.getLogger("flaskserve.dataplane")

SERVER_NAME = "flaskserve"
EXTENSIONS = ["model_repository", "binary_tensor_data", "statistics"]


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        steps: Iterable[Step] = (),
        limits: RequestLimits | None = None,
    ) -> None:
        self.repository = repository
        self.limits = limits if limits is not None else RequestLimits()
        #: Run in this order before every inference, and after it.
        self.steps: tuple[Step, ...] = tuple(steps)
        #: id(model) -> its batcher; the batcher holds the model, so the id stays unique.
        self._batchers: dict[int, Batcher] = {}
        self._batchers_lock = threading.Lock()
        repository.on_unload.append(self._stop_batcher)

    def lookup(self, name: str, version: str | None = None) -> Model:
        """The model version a request for `name` (and `version`, None: the default) runs on:
        what a front door calls first, before it reads the body, so an unknown model is 404
        and one that is not ready 503 whatever the body says."""
        return self.repository.get(name, version)

    def check(
        self, model: Model, tensors: Iterable[DeclaredTensor], outputs: Sequence[str] | None
    ) -> None:
        """`check_request` with the row limit of `model` (its model.toml's, or the server's):
        what every front door calls on what a request declares, once it has looked the model up,
        before it decodes a payload."""
        max_rows = self.limits.rows_for(self.repository.entry(model.name).config)
        check_request(model, tensors, outputs, self.limits, max_rows)

    def infer(self, request: InferenceRequest) -> InferenceResult:
        """Run `request` on its model. Its inputs and requested outputs are checked before any
        compute is spent unless the front door checked what it declared (`request.checked`).
        Every step sees the request before the model runs and after it ended, failed or not;
        waiting stops at the context's deadline."""
        context = request.context
        for step in self.steps:
            step.before(context, request.model.name, request.inputs)
        started = time.perf_counter()
        model: Model | None = None
        try:
            if context.deadline is None:
                result = self._run_served(request)
            else:
                with deadlines.until(context.deadline):
                    result = self._run_served(request)
            model = result.model
            return result
        finally:
            seconds = time.perf_counter() - started
            for step in self.steps:
                step.after(context, model, request.inputs, seconds)

    def _run_served(self, request: InferenceRequest) -> InferenceResult:
        model = request.model
        try:
            return InferenceResult(model, self._run(model, request, request.checked))
        except ModelNotReady:
            # A version swap unloaded `model` between the lookup and the predict: run once more
            # on what is served now, so a swap fails no request. Truly unloaded: raise again.
            current = self.repository.get(model.name, request.requested_version)
            if current is model:
                raise
            return InferenceResult(current, self._run(current, request, False))

    def _run(self, model: Model, request: InferenceRequest, checked: bool) -> Arrays:
        """`request`'s inputs through `model`; unless `checked` (for this very model), they are
        held to its signature and the limits first."""
        inputs = request.inputs
        if not checked:
            self.check(model, declared_arrays(inputs, request.datatypes), request.outputs)
        parameters = request.parameters if model.takes_parameters else NO_PARAMETERS
        if model.max_batch_size > 0:
            batcher = self._batchers.get(id(model)) or self._start_batcher(model)
            return batcher.submit(dict(inputs), parameters)
        return run_model(model, dict(inputs), parameters=parameters)

    def _start_batcher(self, model: Model) -> Batcher:
        """The batcher of `model`, started on its first request; the repository's unload
        notice (`_stop_batcher`) closes it."""
        with self._batchers_lock:
            batcher = self._batchers.get(id(model))
            if batcher is not None:
                return batcher
            batcher = Batcher(model)
            self._batchers[id(model)] = batcher
        if not self._serves(model):  # unloaded between the lookup and now
            self._stop_batcher(model)
            raise ModelNotReady(f"model {model.name!r} version {model.version} was unloaded")
        return batcher

    def _stop_batcher(self, model: Model) -> None:
        with self._batchers_lock:
            batcher = self._batchers.pop(id(model), None)
        if batcher is not None:
            batcher.close()

    def _serves(self, model: Model) -> bool:
        entry = self.repository.entry(model.name)
        return any(status.model is model for status in entry.versions.values())

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """V2 model metadata; for a model that is not ready, its state and the reason why."""
        entry = self.repository.entry(name)
        served = [s.version for s in entry.version_status()]
        if version is not None or entry.default is not None:
            model = self.repository.get(name, version)
            return {
                "name": name,
                "versions": served,
                "platform": model.platform,
                "inputs": [spec.as_metadata() for spec in model.inputs],
                "outputs": [spec.as_metadata() for spec in model.outputs],
            }
        return _unavailable_metadata(entry, served)


def _unavailable_metadata(entry: ModelEntry, served: list[str]) -> dict[str, Any]:
    config = entry.config
    return {
        "name": entry.name,
        "versions": served,
        "platform": (config.runtime if config and config.runtime else "") or "",
        "inputs": [spec.as_metadata() for spec in (config.inputs if config else ())],
        "outputs": [spec.as_metadata() for spec in (config.outputs if config else ())],
        "state": entry.state,
        "reason": entry.reason,
    }
