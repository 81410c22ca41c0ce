"""The data plane's explicit seams: steps given at construction, unload notices, errors with
headers. No Flask here: the context is an argument, not a global."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from flaskserve.core import deadlines
from flaskserve.core.context import InferenceContext
from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import (
    FlaskServeError,
    Forbidden,
    InvalidInput,
    ModelFailed,
    Overloaded,
    RateLimited,
    Unauthorized,
)
from flaskserve.core.model import Model, TensorSpec
from flaskserve.core.repository import ModelRepository
from flaskserve.core.request import InferenceRequest


class Recording:
    """A step that writes down what it saw, in a log shared with the other steps."""

    def __init__(self, name: str, log: list[Any]) -> None:
        self.name = name
        self.log = log

    def before(
        self, context: InferenceContext, name: str, inputs: Mapping[str, np.ndarray]
    ) -> None:
        self.log.append((self.name, "before", context.request_id, name, deadlines.remaining()))

    def after(
        self,
        context: InferenceContext,
        model: Model | None,
        inputs: Mapping[str, np.ndarray],
        seconds: float,
    ) -> None:
        version = model.version if model is not None else None
        self.log.append((self.name, "after", context.request_id, version, seconds >= 0))


class Refusing(Recording):
    def before(
        self, context: InferenceContext, name: str, inputs: Mapping[str, np.ndarray]
    ) -> None:
        super().before(context, name, inputs)
        raise InvalidInput("refused by a step")


class SetsDeadline(Recording):
    def before(
        self, context: InferenceContext, name: str, inputs: Mapping[str, np.ndarray]
    ) -> None:
        context.deadline = time.monotonic() + 60
        super().before(context, name, inputs)


def make_model(
    predict: Any = None, max_batch_size: int = 0, unloads: list[str] | None = None
) -> Model:
    def run(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        predict_seen.append(deadlines.remaining())
        if predict is not None:
            return predict(arrays)
        return {"y": arrays["x"] * 2}

    predict_seen: list[float | None] = []
    model = Model(
        name="m",
        version="1",
        inputs=[TensorSpec("x", "FP32", [-1, 2])],
        outputs=[TensorSpec("y", "FP32", [-1, 2])],
        predict_fn=run,
        max_batch_size=max_batch_size,
        unload_fn=None if unloads is None else lambda: unloads.append("runtime"),
    )
    model.parameters["predict_seen"] = predict_seen
    return model


def served(model_factory: Any) -> ModelRepository:
    repository = ModelRepository(None, loader=None)  # type: ignore[arg-type]
    repository.register(model_factory)
    return repository


ROW = {"x": np.ones((1, 2), dtype=np.float32)}
TYPES = {"x": "FP32"}


def test_the_steps_given_at_construction_run_in_order_around_the_model_with_the_context() -> None:
    log: list[Any] = []
    repository = served(make_model)
    steps = [Recording("first", log), SetsDeadline("second", log), Recording("third", log)]
    dataplane = DataPlane(repository, steps)
    context = InferenceContext("test", "req-1")
    request = InferenceRequest(dataplane.lookup("m"), ROW, TYPES, None, context)

    model, outputs = dataplane.infer(request)

    assert outputs["y"].tolist() == [[2.0, 2.0]]
    assert [entry[:3] for entry in log] == [
        ("first", "before", "req-1"),
        ("second", "before", "req-1"),
        ("third", "before", "req-1"),
        ("first", "after", "req-1"),
        ("second", "after", "req-1"),
        ("third", "after", "req-1"),
    ]
    assert log[0][4] is None  # no deadline yet when the first step ran
    # The deadline a step set is the one the model's wait runs under.
    (remaining,) = model.parameters["predict_seen"]
    assert remaining is not None and 50 < remaining <= 60
    assert [entry[3] for entry in log[3:]] == ["1", "1", "1"]


def test_a_refusing_step_stops_the_inference_before_the_model_and_later_steps() -> None:
    log: list[Any] = []
    model = make_model()
    dataplane = DataPlane(served(lambda: model), [Refusing("limit", log), Recording("late", log)])

    with pytest.raises(InvalidInput, match="refused by a step"):
        dataplane.infer(InferenceRequest(model, ROW, TYPES, None, InferenceContext("test")))

    assert [entry[:2] for entry in log] == [("limit", "before")]
    assert model.parameters["predict_seen"] == []


def test_after_steps_hear_of_a_failed_inference_with_no_model() -> None:
    log: list[Any] = []

    def broken(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        raise RuntimeError("secret path /etc/x")

    dataplane = DataPlane(served(lambda: make_model(broken)), [Recording("usage", log)])
    context = InferenceContext("test", "req-9")
    request = InferenceRequest(dataplane.lookup("m"), ROW, TYPES, None, context)

    with pytest.raises(ModelFailed):
        dataplane.infer(request)

    assert log[-1] == ("usage", "after", "req-9", None, True)


def test_unloading_a_version_notifies_every_listener_then_the_runtime_once() -> None:
    events: list[str] = []
    repository = served(lambda: make_model(unloads=events))
    repository.on_unload.append(lambda model: events.append(f"listener {model.version}"))

    repository.unload("m")

    assert events == ["listener 1", "runtime"]


def test_the_batcher_stops_on_unload_without_the_models_unload_function_being_replaced() -> None:
    events: list[str] = []
    model = make_model(max_batch_size=8, unloads=events)
    runtime_unload = model.unload_fn
    repository = served(lambda: model)
    dataplane = DataPlane(repository)
    dataplane.infer(InferenceRequest(model, ROW, TYPES))  # starts the version's batcher
    (batcher,) = dataplane._batchers.values()

    assert model.unload_fn is runtime_unload
    repository.unload("m")

    assert model.unload_fn is runtime_unload
    assert events == ["runtime"]
    assert batcher.closed
    assert dataplane._batchers == {}


def test_a_failing_listener_does_not_keep_the_runtime_loaded() -> None:
    events: list[str] = []
    repository = served(lambda: make_model(unloads=events))

    def broken(model: Model) -> None:
        raise RuntimeError("listener bug")

    repository.on_unload.append(broken)
    repository.unload("m")

    assert events == ["runtime"]


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (Unauthorized("send a key"), 401, {"WWW-Authenticate": 'Bearer realm="flaskserve"'}),
        (Forbidden("not this model"), 403, {}),
        (RateLimited("slow down", 7), 429, {"Retry-After": "7"}),
        (Overloaded("busy"), 503, {"Retry-After": "1"}),
        (InvalidInput("bad"), 400, {}),
    ],
)
def test_every_refusal_is_one_error_family_carrying_its_status_and_headers(
    error: FlaskServeError, status: int, headers: dict[str, str]
) -> None:
    assert isinstance(error, FlaskServeError)
    assert error.status_code == status
    assert dict(error.headers) == headers
    assert error.client_message("req-1") == error.message
