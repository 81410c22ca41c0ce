"""The one check of what a request declares: shapes no array can take, the signature, the rows
and elements one request may carry, and `max_request_rows` in model.toml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flaskserve.core.config import read_model_config
from flaskserve.core.dataplane import DataPlane
from flaskserve.core.declared import RequestLimits, check_request, declare
from flaskserve.core.errors import InvalidInput, ModelLoadError, RequestTooLarge
from flaskserve.core.model import Model, TensorSpec
from flaskserve.core.repository import ModelRepository
from flaskserve.core.request import InferenceRequest
from flaskserve.runtimes.registry import load_model


def echo(shape: list[int], datatype: str = "FP32") -> Model:
    return Model(
        "echo", "1", [TensorSpec("x", datatype, shape)], [TensorSpec("y", datatype, shape)],
        lambda inputs: {"y": inputs["x"]},
    )


@pytest.mark.parametrize(
    ("shape", "datatype", "words"),
    [
        ([2**62, 0, 4], "FP32", "larger than any array"),
        ([2**63, 0], "BYTES", "larger than any array"),
        ([1] * 65, "FP32", "at most 64"),
        ([-1, 4], "FP32", "non-negative"),
        ([1], "FLOAT", "unknown datatype 'FLOAT'"),
    ],
)
def test_a_shape_or_datatype_no_array_can_take_is_refused_by_name(shape, datatype, words) -> None:
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(")) as caught:
        declare("x", datatype, shape)
    assert "'x'" in str(caught.value)


def test_zero_sized_and_64_dimension_shapes_are_declared() -> None:
    assert declare("x", "FP32", [0, 64]).elements == 0
    assert declare("x", "FP32", [1] * 64).rows == 1
    assert declare("x", "FP32", []).rows == 1


def test_rows_over_the_limit_are_400_saying_the_limit_what_was_sent_and_how_to_raise_it() -> None:
    model = echo([-1, 2])
    limits = RequestLimits(max_rows=8)
    check_request(model, [declare("x", "FP32", [8, 2])], None, limits, 8)
    with pytest.raises(RequestTooLarge) as caught:
        check_request(model, [declare("x", "FP32", [9, 2])], None, limits, 8)
    message = str(caught.value)
    assert caught.value.status_code == 400
    assert "has 9 rows" in message and "at most 8" in message
    assert "max_request_rows" in message and "--max-batch-rows" in message
    check_request(model, [declare("x", "FP32", [10**6, 2])], None, limits, 0)  # 0: no limit


def test_elements_beyond_what_the_body_could_carry_are_refused() -> None:
    model = echo([-1, -1])
    limits = RequestLimits(max_rows=0, max_elements=1000)
    check_request(model, [declare("x", "FP32", [1, 1000])], None, limits, 0)
    with pytest.raises(RequestTooLarge, match="1001 elements"):
        check_request(model, [declare("x", "FP32", [1, 1001])], None, limits, 0)


def test_the_signature_is_checked_before_the_limits() -> None:
    with pytest.raises(InvalidInput, match="is BYTES but model 'echo' expects FP32"):
        check_request(echo([-1]), [declare("x", "BYTES", [10**6])], None, RequestLimits(), 4)


def write_model(root: Path, extra: str) -> Path:
    folder = root / "echo"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "echo.py").write_text("class Echo:\n    def predict(self, x):\n"
                                          "        return {'y': x}\n")
    (folder / "model.toml").write_text(
        f'runtime = "python"\nentrypoint = "echo:Echo"\n{extra}\n'
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [-1]\n'
    )
    return folder


def test_max_request_rows_in_model_toml_replaces_the_servers_limit(tmp_path) -> None:
    write_model(tmp_path, "max_request_rows = 3")
    repository = ModelRepository(tmp_path, load_model)
    repository.load_all()
    dataplane = DataPlane(repository, limits=RequestLimits(max_rows=100))
    echo = repository.get("echo")
    dataplane.check(echo, [declare("x", "FP32", [3])], None)
    with pytest.raises(RequestTooLarge, match="at most 3"):
        dataplane.check(echo, [declare("x", "FP32", [4])], None)
    with pytest.raises(RequestTooLarge, match="at most 3"):  # arrays handed in directly too
        dataplane.infer(InferenceRequest(echo, {"x": np.zeros(4, np.float32)}, {"x": "FP32"}))


@pytest.mark.parametrize("value", ["-1", "1.5", '"10"'])
def test_a_max_request_rows_that_is_no_count_is_a_load_error(tmp_path, value) -> None:
    with pytest.raises(ModelLoadError, match="max_request_rows"):
        read_model_config(write_model(tmp_path, f"max_request_rows = {value}"))
