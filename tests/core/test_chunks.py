"""Chunked predicts: a model whose runtime sets `chunk_rows` never sees more rows in one call,
whether it batches or not, and the request gets the outputs one call would have given."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from flaskserve.core import deadlines
from flaskserve.core.batching import Batcher, run_model
from flaskserve.core.errors import InferenceFailed
from flaskserve.core.model import Model, TensorSpec


class Calls:
    """A row-wise model (each output row depends on its input row only) recording call sizes."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        x = inputs["x"]
        self.rows.append(len(x))
        return {
            "y": x * 2 + 1,
            "total": x.sum(axis=1),
            "label": np.array([f"row{int(v)}".encode() for v in x[:, 0]], dtype=object),
        }


def model(predict: Any, chunk_rows: int, max_batch_size: int = 0) -> Model:
    return Model(
        name="m",
        version="1",
        inputs=[TensorSpec("x", "FP64", [-1, 3])],
        outputs=[
            TensorSpec("y", "FP64", [-1, 3]),
            TensorSpec("total", "FP32", [-1]),
            TensorSpec("label", "BYTES", [-1]),
        ],
        predict_fn=predict,
        max_batch_size=max_batch_size,
        chunk_rows=chunk_rows,
    )


def request(rows: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(rows).normal(size=(rows, 3)) * 100}


def assert_identical(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 100, 2000])
def test_a_model_that_does_not_batch_runs_in_chunks_with_the_outputs_of_one_call(
    rows: int,
) -> None:
    whole, chunked = Calls(), Calls()
    expected = run_model(model(whole, chunk_rows=0), request(rows))
    got = run_model(model(chunked, chunk_rows=8), request(rows))
    assert_identical(got, expected)
    assert whole.rows == [rows]
    assert max(chunked.rows) <= 8 and sum(chunked.rows) == rows
    assert len(chunked.rows) == -(-rows // 8)


def test_a_request_larger_than_max_batch_size_runs_alone_in_chunks_of_it() -> None:
    calls = Calls()
    batcher = Batcher(model(calls, chunk_rows=16, max_batch_size=16))
    try:
        got = batcher.submit(request(50))
    finally:
        batcher.close()
    assert calls.rows == [16, 16, 16, 2]
    assert_identical(got, run_model(model(Calls(), chunk_rows=0), request(50)))


def test_a_chunked_model_that_returns_the_wrong_rows_fails_clearly() -> None:
    def one_row(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        x = inputs["x"]
        return {"y": x[:1], "total": x[:1, 0], "label": np.array([b"a"], dtype=object)}

    with pytest.raises(InferenceFailed, match="chunk_rows > 0 must return one row per input"):
        run_model(model(one_row, chunk_rows=4), request(10))


def test_a_request_past_its_deadline_stops_between_chunks() -> None:
    calls = Calls()

    def slow_clock(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        if calls.rows:  # the deadline passes during the first chunk
            raise AssertionError("a chunk ran after the deadline")
        return calls(inputs)

    with deadlines.until(time.monotonic() + 0.0), pytest.raises(deadlines.RequestTimeout):
        run_model(model(slow_clock, chunk_rows=4), request(10))
    assert calls.rows == [4]
