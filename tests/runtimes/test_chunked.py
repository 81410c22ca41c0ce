"""Runtimes that take many rows predict a large request in chunks (`chunk_rows`: the model's
`max_batch_size`, else the runtime's default), and the request gets what one call gives."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import requests
import skops.io
from sklearn.neighbors import KNeighborsClassifier

from flaskserve.core.batching import run_model
from flaskserve.core.config import config_from_mapping, read_model_config
from flaskserve.core.model import Model
from flaskserve.runtimes import sklearn as sklearn_runtime
from flaskserve.runtimes.context import RuntimeOptions
from flaskserve.runtimes.registry import load_model


def load(model_dir: Path, options: RuntimeOptions | None = None) -> Model:
    return load_model(read_model_config(model_dir), "1", model_dir / "1",
                      options or RuntimeOptions())


def counted(model: Model) -> list[int]:
    """Wrap `model`'s predict to record the rows of each call."""
    rows: list[int] = []
    predict = model.predict_fn

    def recording(inputs):  # type: ignore[no-untyped-def]
        rows.append(len(next(iter(inputs.values()))))
        return predict(inputs)

    model.predict_fn = recording
    return rows


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(got[name], expected[name])


def chunk_toml(chunk: int | None, batching: str = "") -> str:
    return ("" if chunk is None else f"chunk_rows = {chunk}\n") + batching


def test_sklearn_runs_chunks_of_its_default_and_of_max_batch_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 5)).astype(np.float32)
    estimator = KNeighborsClassifier(3).fit(features, (features[:, 0] > 0).astype(int))
    x = {"input": rng.normal(size=(2500, 5)).astype(np.float32)}
    models = {}
    for name, toml in {
        "whole": "chunk_rows = 0\n",
        "default": "",
        "batching": "[batching]\nmax_batch_size = 64\n",
    }.items():
        (tmp_path / name / "1").mkdir(parents=True)
        file = tmp_path / name / "1" / "model.skops"
        skops.io.dump(estimator, file)
        trusted = skops.io.get_untrusted_types(file=file)  # the k-d tree's own types
        (tmp_path / name / "model.toml").write_text(
            f'runtime = "sklearn"\ntrusted_types = {trusted!r}\n' + toml
        )
        models[name] = load(tmp_path / name)
    calls = {name: counted(model) for name, model in models.items()}
    expected = run_model(models["whole"], x)
    assert_same(run_model(models["default"], x), expected)
    assert_same(run_model(models["batching"], x), expected)
    assert calls["whole"] == [2500]
    assert calls["default"] == [1024, 1024, 452]
    assert max(calls["batching"]) == 64 and sum(calls["batching"]) == 2500
    assert sklearn_runtime.DEFAULT_CHUNK_ROWS == 1024


def test_onnx_runs_chunks_with_the_outputs_of_one_call(
    tmp_path: Path, onnx_files, write_model
) -> None:
    whole = load(write_model(tmp_path, "whole", "chunk_rows = 0\n",
                             {"1/model.onnx": onnx_files["affine"]}))
    chunked = load(write_model(tmp_path, "chunked", "",
                               {"1/model.onnx": onnx_files["affine"]}))
    rows = counted(chunked)
    x = {"x": np.random.default_rng(1).normal(size=(1000, 4)).astype(np.float32)}
    assert_same(run_model(chunked, x), run_model(whole, x))
    assert chunked.chunk_rows == 64 and max(rows) == 64 and sum(rows) == 1000


def test_torch_runs_chunks_with_the_outputs_of_one_call(
    tmp_path: Path, torch_signature: str, torch_files, write_model
) -> None:
    files = {"1/model.pt": torch_files["pt"]}
    whole = load(write_model(tmp_path, "whole", "chunk_rows = 0\n" + torch_signature, files))
    chunked = load(write_model(tmp_path, "chunked", torch_signature, files))
    rows = counted(chunked)
    x = {"x": np.random.default_rng(2).normal(size=(300, 4)).astype(np.float32)}
    assert_same(run_model(chunked, x), run_model(whole, x))
    assert chunked.chunk_rows == 64 and max(rows) == 64 and sum(rows) == 300


@pytest.mark.slow
def test_sentence_transformers_on_onnx_encodes_chunks_of_max_batch_size(
    tmp_path: Path, minilm_dir: Path, minilm_export: Path
) -> None:
    from flaskserve.runtimes import sentence_transformers as st_runtime

    cache = RuntimeOptions(cache_dir=minilm_export.parent.parent)
    models = {}
    for name, toml in {"whole": {"chunk_rows": 0},
                       "chunked": {"batching": {"max_batch_size": 32}}}.items():
        config = config_from_mapping(
            {"runtime": "sentence_transformers", "path": str(minilm_dir), "backend": "onnx",
             **toml}, name, tmp_path)
        models[name] = st_runtime.load(config, "1", tmp_path / "1", cache)
    rows = counted(models["chunked"])
    words = ["a", "model", "server", "answers", "requests", "in", "chunks", "of", "sentences"]
    texts = [" ".join(words[: 3 + i % 7]).encode() for i in range(100)]
    x = {"text": np.array(texts, dtype=object)}
    got = run_model(models["chunked"], x)["embedding"]
    expected = run_model(models["whole"], x)["embedding"]
    assert rows == [32, 32, 32, 4]
    # Padding differs with the chunk (each is padded to its longest sentence), which ONNX
    # Runtime's kernels may round differently in the last bits.
    np.testing.assert_allclose(got, expected, atol=1e-5)


def clear_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM), so the next reading is the peak from now on."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


@pytest.mark.slow
def test_a_two_thousand_sentence_request_answers_with_bounded_memory(
    start_server, tmp_path: Path, minilm_export: Path
) -> None:
    from flaskserve.models import minilm

    (tmp_path / "minilm" / "1").mkdir(parents=True)
    (tmp_path / "minilm" / "model.toml").write_text(minilm.MODEL_TOML)
    server = start_server([str(tmp_path), "--workers", "1"], timeout=180)
    server.wait_for_log("model minilm version 1 is ready", timeout=180)
    (worker,) = server.worker_pids()
    words = ["a", "user", "asks", "the", "server", "for", "the", "embeddings", "of", "many",
             "short", "sentences", "at", "once"]
    texts = [" ".join(words[: 4 + i % 10]) for i in range(2000)]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2000], "data": texts}]}
    small = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    url = f"{server.url}/v2/models/minilm/infer"
    assert requests.post(url, json=small, timeout=60).status_code == 200
    before = status_mib(worker, "VmRSS:")
    clear_peak(worker)
    answer = requests.post(url, json=body, timeout=600)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["shape"] == [2000, 384]
    # One call on all 2,000 sentences grew this worker by about 700 MiB (its activations, which
    # ONNX Runtime's arena then keeps); chunks of max_batch_size (32) need a few tens of MiB.
    assert status_mib(worker, "VmHWM:") - before < 150
    assert requests.post(url, json=small, timeout=60).status_code == 200


@pytest.mark.slow
def test_onnx_runtime_gives_a_large_batchs_memory_back_after_the_run(
    tmp_path: Path, minilm_dir: Path, minilm_export: Path
) -> None:
    from flaskserve.runtimes import sentence_transformers as st_runtime

    config = config_from_mapping(
        {"runtime": "sentence_transformers", "path": str(minilm_dir), "backend": "onnx",
         "chunk_rows": 0}, "minilm", tmp_path)
    model = st_runtime.load(config, "1", tmp_path / "1",
                            RuntimeOptions(cache_dir=minilm_export.parent.parent))
    pid = os.getpid()
    sentence = " ".join(["memory"] * 120)
    run_model(model, {"text": np.array([b"warm up"], dtype=object)})
    before = status_mib(pid, "VmRSS:")
    clear_peak(pid)
    run_model(model, {"text": np.array([sentence.encode()] * 128, dtype=object)})
    peak = status_mib(pid, "VmHWM:")
    assert peak - before > 200  # the run's activations: the arena grew by hundreds of MiB
    # ... and gave them back when the run ended (ONNX Runtime's default kept them all).
    assert status_mib(pid, "VmRSS:") - before < 60
