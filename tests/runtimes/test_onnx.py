"""The ONNX runtime: signatures read from graphs, checked declarations, options, devices."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from flaskserve.core.config import read_model_config
from flaskserve.core.errors import InvalidInput, ModelLoadError
from flaskserve.core.model import TensorSpec
from flaskserve.runtimes import onnx as onnx_runtime
from flaskserve.runtimes.context import RuntimeOptions

AFFINE_DECLARED = """\
[[inputs]]
name = "{input}"
datatype = "{datatype}"
shape = {shape}

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 2]
"""


def load(model_dir: Path, version: str = "1"):  # type: ignore[no-untyped-def]
    return onnx_runtime.load(read_model_config(model_dir), version, model_dir / version)


def direct(file: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.fixture
def affine_dir(tmp_path: Path, onnx_files, write_model) -> Path:
    return write_model(tmp_path, "affine", "", {"1/model.onnx": onnx_files["affine"]})


def test_signature_is_read_from_the_graph_with_symbolic_dims_as_minus_one(affine_dir) -> None:
    model = load(affine_dir)
    assert model.inputs == [TensorSpec("x", "FP32", [-1, 4])]
    assert model.outputs == [TensorSpec("y", "FP32", [-1, 2])]
    assert model.platform == "onnxruntime_onnx"


def test_predictions_equal_onnxruntime_called_directly(affine_dir, onnx_files) -> None:
    model = load(affine_dir)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    (expected,) = direct(onnx_files["affine"], {"x": x})
    np.testing.assert_allclose(model.predict({"x": x})["y"], expected, rtol=1e-6)


def test_read_only_inputs_as_the_binary_protocol_gives_them_are_accepted(
    affine_dir, onnx_files
) -> None:
    x = np.ones((2, 4), np.float32)
    x.setflags(write=False)
    (expected,) = direct(onnx_files["affine"], {"x": np.ones((2, 4), np.float32)})
    np.testing.assert_allclose(load(affine_dir).predict({"x": x})["y"], expected)


def test_string_tensors_travel_as_utf8_bytes(tmp_path: Path, onnx_files, write_model) -> None:
    model = load(write_model(tmp_path, "shout", "", {"1/model.onnx": onnx_files["shout"]}))
    assert model.inputs == [TensorSpec("words", "BYTES", [-1])]
    words = ["hello", "caf\u00e9 au lait"]
    upper = model.predict({"words": np.array([w.encode() for w in words], dtype=object)})["upper"]
    (expected,) = direct(onnx_files["shout"], {"words": np.array(words, dtype=object)})
    assert (
        upper.tolist()
        == [text.encode() for text in expected]
        == [b"HELLO", "CAF\u00e9 AU LAIT".encode()]
    )
    with pytest.raises(InvalidInput, match="not UTF-8"):
        model.predict({"words": np.array([b"\xff\xfe"], dtype=object)})


@pytest.mark.parametrize(
    ("input_name", "datatype", "shape", "reason"),
    [
        ("features", "FP32", "[-1, 4]", "declares input(s) features that the graph lacks"),
        ("x", "FP64", "[-1, 4]", "datatypes differ"),
        ("x", "FP32", "[-1, 5]", "a fixed dimension differs"),
        ("x", "FP32", "[-1]", "ranks differ"),
    ],
)
def test_a_declared_signature_that_does_not_fit_the_graph_is_a_load_error(
    tmp_path: Path, onnx_files, write_model, input_name, datatype, shape, reason
) -> None:
    toml = AFFINE_DECLARED.format(input=input_name, datatype=datatype, shape=shape)
    model_dir = write_model(tmp_path, "affine", toml, {"1/model.onnx": onnx_files["affine"]})
    with pytest.raises(ModelLoadError, match=re.escape(reason)) as caught:
        load(model_dir)
    assert "x FP32 [-1, 4]" in str(caught.value) or "has FP32" in str(caught.value)


def test_a_declared_signature_may_fix_a_symbolic_dimension(
    tmp_path: Path, onnx_files, write_model
) -> None:
    toml = AFFINE_DECLARED.format(input="x", datatype="FP32", shape="[8, 4]")
    model = load(write_model(tmp_path, "affine", toml, {"1/model.onnx": onnx_files["affine"]}))
    assert model.inputs == [TensorSpec("x", "FP32", [8, 4])]


def test_skl2onnx_zipmap_output_is_explained_and_declared_tensor_outputs_serve(
    tmp_path: Path, write_model, digits_data
) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    features, labels = digits_data
    classifier = LogisticRegression(max_iter=200).fit(features[:300], labels[:300])
    default_conversion = to_onnx(classifier, features[:1]).SerializeToString()
    model_dir = write_model(tmp_path, "zipmap", "", {"1/model.onnx": default_conversion})
    with pytest.raises(ModelLoadError, match="zipmap"):
        load(model_dir)
    (model_dir / "model.toml").write_text(
        '[[outputs]]\nname = "output_label"\ndatatype = "INT64"\nshape = [-1]\n'
    )
    model = load(model_dir)
    assert [spec.name for spec in model.outputs] == ["output_label"]
    got = model.predict({"X": features[:20]})["output_label"]
    np.testing.assert_array_equal(got, classifier.predict(features[:20]))


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ('graph_optimization_level = "max"', "'disable', 'basic', 'extended', 'all'"),
        ("intra_op_threads = -1", "intra_op_threads in model.toml must be an integer >= 0"),
        ('inter_op_threads = "2"', "inter_op_threads in model.toml must be an integer"),
        ('device = "gpu"', "'cpu', 'cuda', 'auto'"),
    ],
)
def test_bad_session_options_are_load_errors_naming_the_key(
    affine_dir, option: str, reason: str
) -> None:
    (affine_dir / "model.toml").write_text(option + "\n")
    with pytest.raises(ModelLoadError, match=re.escape(reason)):
        load(affine_dir)


def test_session_options_from_model_toml_load_and_serve(affine_dir, onnx_files) -> None:
    (affine_dir / "model.toml").write_text(
        'intra_op_threads = 1\ninter_op_threads = 1\ngraph_optimization_level = "disable"\n'
    )
    options = onnx_runtime.session_options(read_model_config(affine_dir))
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.ones((3, 4), np.float32)
    (expected,) = direct(onnx_files["affine"], {"x": x})
    np.testing.assert_allclose(load(affine_dir).predict({"x": x})["y"], expected)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA"
)
def test_cuda_without_a_gpu_is_a_clear_load_error_and_auto_uses_the_cpu(affine_dir) -> None:
    (affine_dir / "model.toml").write_text('device = "cuda"\n')
    with pytest.raises(ModelLoadError, match="device = 'cuda' but this ONNX Runtime has no CUDA"):
        load(affine_dir)
    (affine_dir / "model.toml").write_text('device = "auto"\n')
    assert load(affine_dir).parameters["providers"] == ["CPUExecutionProvider"]


def spinning(options: ort.SessionOptions) -> str:
    try:
        return str(options.get_session_config_entry(onnx_runtime.ALLOW_SPINNING))
    except Exception:  # not set: ONNX Runtime's default, which spins
        return "1"


def test_threads_and_spinning_default_to_the_servers_choice_and_model_toml_wins(
    affine_dir,
) -> None:
    (affine_dir / "model.toml").write_text("")
    mine = onnx_runtime.session_options(read_model_config(affine_dir))
    assert (mine.intra_op_num_threads, spinning(mine)) == (0, "1")  # the library's defaults
    served = RuntimeOptions(intra_op_threads=3, intra_op_spinning=False)
    file = affine_dir / "1" / "model.onnx"
    session = onnx_runtime.create_session(file, read_model_config(affine_dir), served)
    options = session.get_session_options()
    assert (options.intra_op_num_threads, spinning(options)) == (3, "0")
    (affine_dir / "model.toml").write_text("intra_op_threads = 1\nintra_op_spinning = true\n")
    options = onnx_runtime.session_options(read_model_config(affine_dir), served)
    assert (options.intra_op_num_threads, spinning(options)) == (1, "1")
