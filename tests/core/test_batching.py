"""The adaptive batcher: batch boundaries, exact splitting, error isolation, idle cost, the
`max_delay_ms` window, unload.

The model's predict records every call and can block on a gate, so each test decides what is
queued while a batch runs; batch boundaries are then deterministic, not a matter of timing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from flaskserve.core.batching import Batcher
from flaskserve.core.dataplane import DataPlane
from flaskserve.core.errors import InferenceFailed, InvalidInput, ModelFailed, ModelNotReady
from flaskserve.core.model import Model, TensorSpec
from flaskserve.core.repository import ModelRepository
from flaskserve.core.request import InferenceRequest
from waiting import eventually

WAIT = 10.0  # upper bound for anything that should happen at once


class Recorder:
    """A predict function that records each call (its inputs and thread) and may block."""

    def __init__(self, fn: Callable[..., dict[str, Any]], gated: bool = True) -> None:
        self.fn = fn
        self.calls: list[dict[str, np.ndarray]] = []
        self.threads: list[threading.Thread] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        self.calls.append({name: array.copy() for name, array in inputs.items()})
        self.threads.append(threading.current_thread())
        assert self.gate.wait(WAIT), "the test never opened the gate"
        return self.fn(**inputs)

    def rows(self) -> list[int]:
        return [len(next(iter(call.values()))) for call in self.calls]


def double(x: np.ndarray) -> dict[str, Any]:
    return {"y": x * 2, "total": x.sum(axis=1)}


def make_model(
    predict: Callable[[dict[str, np.ndarray]], dict[str, Any]],
    max_batch_size: int = 8,
    max_delay_ms: float = 0.0,
    inputs: list[TensorSpec] | None = None,
    outputs: list[TensorSpec] | None = None,
) -> Model:
    return Model(
        name="m",
        version="1",
        inputs=inputs or [TensorSpec("x", "FP32", [-1, 3])],
        outputs=outputs or [TensorSpec("y", "FP32", [-1, 3]), TensorSpec("total", "FP32", [-1])],
        predict_fn=predict,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
    )


def rows_of(n: int, start: float) -> np.ndarray:
    return np.arange(start, start + 3 * n, dtype=np.float32).reshape(n, 3)


class Client:
    """One request submitted from its own thread, as a server's request thread would."""

    def __init__(
        self, batcher: Batcher, inputs: dict[str, np.ndarray], parameters: Any = None
    ) -> None:
        self.inputs = inputs
        self.parameters = parameters or {}
        self.result: dict[str, np.ndarray] | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(batcher,), daemon=True)
        self.thread.start()

    def _run(self, batcher: Batcher) -> None:
        try:
            self.result = batcher.submit(self.inputs, self.parameters)
        except Exception as exc:
            self.error = exc

    def join(self) -> Client:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "request still waiting"
        return self


def occupy(batcher: Batcher, recorder: Recorder, rows: int = 1) -> Client:
    """Make the model busy: one request predicting inline, blocked on the gate, so whatever is
    submitted next queues behind it."""
    inline = Client(batcher, {"x": rows_of(rows, 1000)})
    eventually(lambda: len(recorder.calls) == 1, message="the inline request predicts")
    return inline


@pytest.fixture
def batchers() -> Any:
    started: list[Batcher] = []

    def start(model: Model, **kwargs: Any) -> Batcher:
        batcher = Batcher(model, **kwargs)
        started.append(batcher)
        return batcher

    yield start
    for batcher in started:
        batcher.close()


def assert_answered_exactly(client: Client) -> None:
    assert client.error is None
    assert client.result is not None
    x = client.inputs["x"]
    np.testing.assert_array_equal(client.result["y"], x * 2)
    np.testing.assert_array_equal(client.result["total"], x.sum(axis=1))


def test_requests_queued_during_a_predict_form_the_next_batch_and_split_back_exactly(
    batchers: Any,
) -> None:
    recorder = Recorder(double)
    batcher = batchers(make_model(recorder, max_batch_size=8))
    busy = occupy(batcher, recorder)
    queued = [Client(batcher, {"x": rows_of(n, 100 * n)}) for n in (1, 3, 0, 4)]
    eventually(lambda: batcher.queued == 4, message="four requests queue")
    over = Client(batcher, {"x": rows_of(2, 900)})  # 1+3+0+4 = 8 rows: this one waits its turn
    eventually(lambda: batcher.queued == 5, message="the fifth request queues")
    recorder.gate.set()
    for client in [busy, *queued, over]:
        assert_answered_exactly(client.join())
    assert recorder.rows() == [1, 8, 2]  # no window: each batch goes when the predict before ends
    np.testing.assert_array_equal(
        recorder.calls[1]["x"], np.concatenate([c.inputs["x"] for c in queued])
    )


def test_a_request_finding_the_model_idle_runs_at_once_in_its_own_thread_despite_a_window(
    batchers: Any,
) -> None:
    recorder = Recorder(double, gated=False)
    batcher = batchers(make_model(recorder, max_delay_ms=60_000))
    for start in (0, 10):  # idle again once the first is answered
        client = Client(batcher, {"x": rows_of(2, start)}).join()
        assert_answered_exactly(client)
        assert recorder.threads[-1] is client.thread
    assert recorder.rows() == [2, 2]


def test_with_a_window_requests_arriving_within_it_share_the_batch_which_goes_once_full(
    batchers: Any,
) -> None:
    recorder = Recorder(double)
    batcher = batchers(make_model(recorder, max_batch_size=8, max_delay_ms=60_000))
    busy = occupy(batcher, recorder)
    leader = Client(batcher, {"x": rows_of(1, 10)})
    eventually(lambda: batcher.queued == 1, message="a request queues behind the running predict")
    recorder.gate.set()
    assert_answered_exactly(busy.join())  # the predict ended: the leader now waits for company
    late = Client(batcher, {"x": rows_of(3, 20)})
    eventually(lambda: batcher.queued == 2, message="a request arriving after the predict queues")
    assert len(recorder.calls) == 1, "the leader ran before its window ended or the batch filled"
    filling = Client(batcher, {"x": rows_of(4, 50)})  # 1 + 3 + 4 = 8 rows: full, goes at once
    for client in (leader, late, filling):
        assert_answered_exactly(client.join())
    assert recorder.rows() == [1, 8]
    assert recorder.threads[1] is leader.thread


def test_when_the_window_ends_the_leader_runs_the_rows_it_has(batchers: Any) -> None:
    recorder = Recorder(double)
    batcher = batchers(make_model(recorder, max_batch_size=8, max_delay_ms=1000))
    busy = occupy(batcher, recorder)
    leader = Client(batcher, {"x": rows_of(1, 10)})
    eventually(lambda: batcher.queued == 1, message="a request queues behind the running predict")
    recorder.gate.set()
    assert_answered_exactly(busy.join())
    late = Client(batcher, {"x": rows_of(2, 20)})  # within the window, yet the batch is not full
    for client in (leader, late):
        assert_answered_exactly(client.join())
    assert recorder.rows() == [1, 3]


def test_a_batch_runs_in_the_thread_of_its_oldest_request(batchers: Any) -> None:
    recorder = Recorder(double)
    batcher = batchers(make_model(recorder))
    busy = occupy(batcher, recorder)
    oldest = Client(batcher, {"x": rows_of(1, 10)})
    eventually(lambda: batcher.queued == 1, message="the oldest request queues")
    younger = Client(batcher, {"x": rows_of(2, 20)})
    eventually(lambda: batcher.queued == 2, message="a younger one queues behind it")
    recorder.gate.set()
    for client in (busy, oldest, younger):
        assert_answered_exactly(client.join())
    assert recorder.rows() == [1, 3]
    assert recorder.threads[1] is oldest.thread
    assert threading.active_count() >= 1 and not any(
        t.name.startswith("flaskserve-batcher") for t in threading.enumerate()
    )


def test_a_request_larger_than_max_batch_size_runs_alone_at_once(batchers: Any) -> None:
    recorder = Recorder(double)
    batcher = batchers(make_model(recorder, max_batch_size=4))
    busy = occupy(batcher, recorder)
    small = Client(batcher, {"x": rows_of(1, 0)})
    eventually(lambda: batcher.queued == 1, message="a small request queues")
    big = Client(batcher, {"x": rows_of(6, 50)})
    eventually(lambda: len(recorder.calls) == 2,
               message="the big request predicts beside the busy one")
    assert recorder.rows() == [1, 6]
    recorder.gate.set()
    for client in (busy, small, big):
        assert_answered_exactly(client.join())
    assert recorder.rows() == [1, 6, 1]


def test_requests_with_different_trailing_shapes_are_never_concatenated(batchers: Any) -> None:
    def widths(x: np.ndarray) -> dict[str, Any]:
        return {"width": np.full(len(x), x.shape[1], dtype=np.int64)}

    recorder = Recorder(widths)
    model = make_model(
        recorder,
        inputs=[TensorSpec("x", "FP32", [-1, -1])],
        outputs=[TensorSpec("width", "INT64", [-1])],
    )
    batcher = batchers(model)
    busy = occupy(batcher, recorder)
    clients = [
        Client(batcher, {"x": np.zeros((1, width), np.float32)}) for width in (3, 3, 5, 5, 3)
    ]
    eventually(lambda: batcher.queued == 5, message="five requests queue")
    recorder.gate.set()
    for client in [busy, *clients]:
        client.join()
    assert [c.result["width"].tolist() for c in clients] == [[3], [3], [5], [5], [3]]
    assert [call["x"].shape for call in recorder.calls[1:]] == [(2, 3), (2, 5), (1, 3)]


def test_requests_are_batched_only_with_requests_of_equal_parameters(batchers: Any) -> None:
    given: list[dict[str, Any]] = []

    def scaled(x: np.ndarray, parameters: Any) -> dict[str, Any]:
        given.append(dict(parameters))
        return {"y": x * parameters.get("scale", 1), "total": x.sum(axis=1)}

    recorder = Recorder(lambda x: {"y": x, "total": x.sum(axis=1)})
    model = make_model(lambda inputs, parameters: scaled(recorder(inputs)["y"], parameters))
    model.takes_parameters = True
    batcher = batchers(model)
    busy = occupy(batcher, recorder)
    scales = [{"scale": 2}, {"scale": 2}, {"scale": 3}, {}, {}, {"scale": 2}]
    clients = [
        Client(batcher, {"x": rows_of(1, 10 * index)}, parameters)
        for index, parameters in enumerate(scales)
    ]
    eventually(lambda: batcher.queued == len(scales), message="six requests queue")
    recorder.gate.set()
    for client in [busy, *clients]:
        client.join()
    for client, parameters in zip(clients, scales, strict=True):
        assert client.error is None and client.result is not None
        scale = parameters.get("scale", 1)
        np.testing.assert_array_equal(client.result["y"], client.inputs["x"] * scale)
    assert recorder.rows()[1:] == [2, 1, 2, 1]
    assert given[1:] == [{"scale": 2}, {"scale": 3}, {}, {"scale": 2}]


def test_bytes_tensors_concatenate_and_split(batchers: Any) -> None:
    def shout(text: np.ndarray) -> dict[str, Any]:
        upper = np.array([t.upper() for t in text], dtype=object)
        return {"upper": upper, "length": np.array([len(t) for t in text], dtype=np.int32)}

    recorder = Recorder(shout)
    model = make_model(
        recorder,
        inputs=[TensorSpec("text", "BYTES", [-1])],
        outputs=[TensorSpec("upper", "BYTES", [-1]), TensorSpec("length", "INT32", [-1])],
    )
    batcher = batchers(model)
    texts = [[b"a"], [b"bb", b"ccc"], [b"dddd"], [b"", b"ee", b"f"]]
    inline = Client(batcher, {"text": np.array([b"warm"], dtype=object)})
    eventually(lambda: len(recorder.calls) == 1, message="the inline request predicts")
    clients = [Client(batcher, {"text": np.array(t, dtype=object)}) for t in texts]
    eventually(lambda: batcher.queued == len(texts), message="the BYTES requests queue")
    recorder.gate.set()
    for client in (inline, *clients):
        client.join()
    assert recorder.calls[1]["text"].tolist() == [b"a", b"bb", b"ccc", b"dddd", b"", b"ee", b"f"]
    for client, text in zip(clients, texts, strict=True):
        assert client.result["upper"].tolist() == [t.upper() for t in text]
        assert client.result["length"].tolist() == [len(t) for t in text]


def test_a_failing_batch_fails_only_the_request_the_model_cannot_handle(
    batchers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def picky(x: np.ndarray) -> dict[str, Any]:
        if (x < 0).any():
            raise ValueError("negative pixels")
        return double(x)

    recorder = Recorder(picky)
    batcher = batchers(make_model(recorder))
    busy = occupy(batcher, recorder)
    good = [Client(batcher, {"x": rows_of(2, 0)}), Client(batcher, {"x": rows_of(1, 7)})]
    eventually(lambda: batcher.queued == 2, message="two good requests queue")
    bad = Client(batcher, {"x": -rows_of(1, 1)})
    eventually(lambda: batcher.queued == 3, message="the bad one queues")
    last = Client(batcher, {"x": rows_of(3, 30)})
    eventually(lambda: batcher.queued == 4, message="four requests queue")
    with caplog.at_level(logging.INFO, logger="flaskserve.batching"):
        recorder.gate.set()
        for client in [busy, *good, bad, last]:
            client.join()
    for client in [busy, *good, last]:
        assert_answered_exactly(client)
    assert isinstance(bad.error, ModelFailed)
    assert str(bad.error) == "model 'm' failed (ValueError)"  # the text is for the log only
    assert str(bad.error.cause) == "negative pixels"
    assert recorder.rows()[1:] == [7, 2, 1, 1, 3]  # the batch, then each request alone
    # The batcher cannot tell whose request it runs, so it logs no exception text itself.
    assert not [r for r in caplog.records if "negative pixels" in r.getMessage() or r.exc_info]


def test_a_model_returning_the_wrong_number_of_rows_fails_with_a_clear_error(
    batchers: Any,
) -> None:
    def drops_a_row(x: np.ndarray) -> dict[str, Any]:
        return {"y": x[1:] * 2, "total": x.sum(axis=1)}

    batcher = batchers(make_model(Recorder(drops_a_row, gated=False)))
    with pytest.raises(InferenceFailed, match="returned 1 rows for output 'y' given 2 input rows"):
        batcher.submit({"x": rows_of(2, 0)})


def test_closing_fails_queued_requests_at_once_and_waits_for_the_running_predict(
    batchers: Any,
) -> None:
    recorder = Recorder(double)
    batcher = batchers(make_model(recorder, max_batch_size=64))
    busy = occupy(batcher, recorder)
    waiting = [Client(batcher, {"x": rows_of(1, 10 * i)}) for i in range(3)]
    eventually(lambda: batcher.queued == 3,
               message="three requests queue behind the running predict")
    closer = threading.Thread(target=batcher.close, daemon=True)
    closer.start()
    for client in waiting:
        client.join()
        assert isinstance(client.error, ModelNotReady)
        assert "was unloaded" in str(client.error)
    assert closer.is_alive(), "close returned while a predict was still running"
    recorder.gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert_answered_exactly(busy.join())
    assert recorder.rows() == [1]
    with pytest.raises(ModelNotReady):
        batcher.submit({"x": rows_of(1, 0)})


def test_closing_fails_a_leader_waiting_out_its_window_at_once(batchers: Any) -> None:
    recorder = Recorder(double)
    batcher = batchers(make_model(recorder, max_delay_ms=60_000))
    busy = occupy(batcher, recorder)
    leader = Client(batcher, {"x": rows_of(1, 10)})
    eventually(lambda: batcher.queued == 1, message="a request queues behind the running predict")
    recorder.gate.set()
    assert_answered_exactly(busy.join())
    batcher.close()
    assert isinstance(leader.join().error, ModelNotReady)
    assert recorder.rows() == [1]


def test_a_request_chosen_to_lead_while_the_model_closes_fails_cleanly(batchers: Any) -> None:
    recorder = Recorder(double)
    batcher = batchers(make_model(recorder))
    busy = occupy(batcher, recorder)
    chosen, proceed = threading.Event(), threading.Event()
    lead = batcher._lead

    def lead_later(pending: Any) -> None:  # hold the leader between being chosen and leading
        chosen.set()
        assert proceed.wait(WAIT)
        lead(pending)

    batcher._lead = lead_later  # type: ignore[method-assign]
    queued = Client(batcher, {"x": rows_of(1, 10)})
    eventually(lambda: batcher.queued == 1, message="a request queues")
    recorder.gate.set()
    assert chosen.wait(WAIT), "the queued request was never chosen to lead"
    closer = threading.Thread(target=batcher.close, daemon=True)
    closer.start()
    eventually(lambda: batcher.queued == 0, message="close fails the queued requests")
    proceed.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert isinstance(queued.join().error, ModelNotReady)
    assert_answered_exactly(busy.join())
    assert recorder.rows() == [1]


def test_the_dataplane_batches_concurrent_requests_and_unloading_closes_the_batcher() -> None:
    recorder = Recorder(double)
    unloaded: list[bool] = []

    def factory() -> Model:
        model = make_model(recorder, max_batch_size=16)
        model.unload_fn = lambda: unloaded.append(True)
        return model

    repository = ModelRepository(None, loader=None)  # type: ignore[arg-type]
    repository.register(factory)
    dataplane = DataPlane(repository)
    results: dict[int, Any] = {}

    def infer(i: int) -> None:
        request = InferenceRequest(dataplane.lookup("m"), {"x": rows_of(1, i)}, {"x": "FP32"})
        _, results[i] = dataplane.infer(request)

    threads = [threading.Thread(target=infer, args=(i,), daemon=True) for i in range(6)]
    threads[0].start()
    eventually(lambda: len(recorder.calls) == 1, message="the first request predicts inline")
    batcher = next(iter(dataplane._batchers.values()))
    for thread in threads[1:]:
        thread.start()
    eventually(lambda: batcher.queued == 5, message="the other five queue")
    recorder.gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert all(np.array_equal(results[i]["y"], rows_of(1, i) * 2) for i in range(6))
    assert recorder.rows() == [1, 5]

    repository.unload("m")
    assert unloaded == [True]
    assert batcher.closed
    assert dataplane._batchers == {}


def test_a_request_that_loses_the_race_with_a_version_swap_runs_on_the_new_version() -> None:
    """The model is looked up, then swapped (its batcher closed) before it predicts: the data
    plane runs the request on the model served now instead of failing it with 503."""
    repository = ModelRepository(None, loader=None)  # type: ignore[arg-type]
    repository.register(lambda: make_model(lambda arrays: double(arrays["x"])))
    dataplane = DataPlane(repository)
    stale = dataplane.lookup("m")
    dataplane.infer(InferenceRequest(stale, {"x": rows_of(1, 0)}, {"x": "FP32"}))  # v1's batcher
    request = InferenceRequest(stale, {"x": rows_of(1, 3)}, {"x": "FP32"}, checked=True)
    repository.load("m")  # the swap closes the stale model's batcher
    model, outputs = dataplane.infer(request)
    assert model is not stale and model is repository.get("m")
    assert outputs["y"].tolist() == [[6.0, 8.0, 10.0]]


def test_a_request_that_loses_the_race_with_a_swap_is_checked_against_the_new_signature() -> None:
    """The door checked the request for the version it looked up; the version swapped in takes
    other inputs, so the request is held to its signature (400) rather than handed to it."""
    wide = [TensorSpec("x", "FP32", [-1, 4])]
    built: list[Model] = []

    def factory() -> Model:
        inputs = wide if built else None
        built.append(make_model(lambda arrays: double(arrays["x"]), inputs=inputs))
        return built[-1]

    repository = ModelRepository(None, loader=None)  # type: ignore[arg-type]
    repository.register(factory)
    dataplane = DataPlane(repository)
    stale = dataplane.lookup("m")
    request = InferenceRequest(stale, {"x": rows_of(1, 0)}, {"x": "FP32"}, checked=True)
    repository.load("m")  # now served: x [-1, 4]
    with pytest.raises(InvalidInput, match="shape"):
        dataplane.infer(request)


def test_a_request_to_an_unloaded_model_still_fails_with_503() -> None:
    repository = ModelRepository(None, loader=None)  # type: ignore[arg-type]
    repository.register(lambda: make_model(lambda arrays: double(arrays["x"])))
    dataplane = DataPlane(repository)
    request = InferenceRequest(dataplane.lookup("m"), {"x": rows_of(1, 0)}, {"x": "FP32"})
    repository.unload("m")
    with pytest.raises(ModelNotReady, match="unloaded"):
        dataplane.infer(request)  # looked up before the unload
    with pytest.raises(ModelNotReady, match="unloaded"):
        dataplane.lookup("m")
