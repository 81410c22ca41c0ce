"""Rate limits shared across processes, batch-row limits and per-request deadlines."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flaskserve import ModelServer, Tensor
from flaskserve.core import deadlines
from flaskserve.core.batching import Batcher
from flaskserve.core.model import Model, TensorSpec
from flaskserve.gate.limits import (
    LocalBuckets,
    SharedBuckets,
    batch_rows,
    retry_after_seconds,
)
from flaskserve.settings import Settings
from waiting import eventually


def test_local_bucket_allows_the_burst_then_asks_to_wait() -> None:
    buckets = LocalBuckets()
    assert [buckets.take("k", 0.5, 3) for _ in range(3)] == [0, 0, 0]
    assert buckets.take("k", 0.5, 3) == 2  # one token at 0.5/s takes 2 s
    assert buckets.take("other", 0.5, 3) == 0


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after_seconds(0.99, 100.0) == 1
    assert retry_after_seconds(0.0, 0.25) == 4


def _take_many(folder: str, count: int, out: multiprocessing.Queue) -> None:
    buckets = SharedBuckets(Path(folder))
    out.put(sum(1 for _ in range(count) if buckets.take("shared", 0.001, 5) == 0))


def test_shared_bucket_holds_across_processes(tmp_path) -> None:
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()
    processes = [
        context.Process(target=_take_many, args=(str(tmp_path), 10, results)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    allowed = sum(results.get(timeout=30) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert allowed == 5  # the burst, once, not once per process


def test_shared_bucket_refills_at_the_rate(tmp_path) -> None:
    buckets = SharedBuckets(tmp_path)
    assert buckets.take("k", 20.0, 1) == 0
    assert buckets.take("k", 20.0, 1) == 1
    # Not a wait for something: the time that passes is what refills the bucket under test.
    time.sleep(0.1)  # 2 tokens' worth at 20/s, capped at the bucket size of 1
    assert buckets.take("k", 20.0, 1) == 0
    assert buckets.take("k", 20.0, 1) == 1
    buckets.close()


def test_batch_rows_are_the_first_dimension_of_the_first_input() -> None:
    assert batch_rows({"a": np.zeros((7, 3)), "b": np.zeros((2,))}) == 7
    assert batch_rows({"a": np.array(3.0)}) == 1


def _slow_batched_model(calls: list[int], seconds: float) -> Model:
    def predict(inputs):
        calls.append(len(inputs["x"]))
        time.sleep(seconds)  # a slow model: what queues behind it waits
        return {"y": inputs["x"]}

    spec = [TensorSpec("x", "FP32", [-1])]
    return Model(
        "slow",
        "1",
        spec,
        [TensorSpec("y", "FP32", [-1])],
        predict,
        max_batch_size=8,
        max_delay_ms=2000,
    )


def test_batched_request_stops_waiting_at_its_deadline_and_leaves_the_queue() -> None:
    calls: list[int] = []
    batcher = Batcher(_slow_batched_model(calls, 0.5))
    others = [
        threading.Thread(target=batcher.submit, args=({"x": np.ones(rows, np.float32)},))
        for rows in (1, 3)
    ]
    others[0].start()
    eventually(lambda: calls == [1], message="the first request is predicting")
    others[1].start()
    eventually(lambda: batcher.queued == 1, message="the next request queues behind it")
    with deadlines.until(time.monotonic() + 0.1), pytest.raises(deadlines.RequestTimeout):
        batcher.submit({"x": np.ones(2, np.float32)})
    assert batcher.queued == 1
    for thread in others:
        thread.join()
    assert calls == [1, 3]  # the 2 rows of the timed-out request were never computed
    batcher.close()


def test_app_answers_504_when_the_deadline_passes_in_the_batch_queue() -> None:
    server = ModelServer(settings=Settings(request_timeout_ms=150))
    predicting = threading.Event()

    @server.model(
        "slow",
        inputs=[Tensor("x", "FP32", [-1])],
        outputs=[Tensor("y", "FP32", [-1])],
        max_batch_size=8,
    )
    def slow(x):
        predicting.set()
        time.sleep(0.6)  # a slow model: the request queued behind it outlives its deadline
        return x

    app = server.app
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    statuses: list[int] = []

    def call() -> None:
        statuses.append(app.test_client().post("/v2/models/slow/infer", json=body).status_code)

    running = threading.Thread(target=call)
    running.start()
    eventually(predicting.is_set, message="the first request is predicting")
    late = app.test_client().post("/v2/models/slow/infer", json=body)
    running.join()
    # A predict that already runs is never cut short; the request queued behind it is.
    assert statuses == [200]
    assert late.status_code == 504
    assert "timed out" in late.get_json()["error"]


def test_app_refuses_batches_over_the_row_limit() -> None:
    server = ModelServer(settings=Settings(max_batch_rows=3))

    @server.model("echo", inputs=[Tensor("x", "FP32", [-1])], outputs=[Tensor("y", "FP32", [-1])])
    def echo(x):
        return x

    client = server.app.test_client()
    body = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1.0] * 4}]}
    response = client.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 400 and "at most 3" in response.get_json()["error"]
    body["inputs"][0].update(shape=[3], data=[1.0] * 3)
    assert client.post("/v2/models/echo/infer", json=body).status_code == 200
