"""Broken model files are load errors with a reason, shown wherever a model's state is shown.

One repository holds a good model next to one broken model per kind of mistake; the server must
come up, serve the good one, and tell in the repository index, the model metadata and
`flaskserve models` why each other one is unavailable.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flaskserve.app import create_app
from flaskserve.cli import main
from flaskserve.settings import Settings

SKLEARN_SIGNATURE = '[[inputs]]\nname = "input"\ndatatype = "FP32"\nshape = [-1, 4]\n'


@pytest.fixture
def broken_repo(tmp_path: Path, onnx_files, torch_files, torch_signature, write_model) -> dict:
    """Model name -> what its reason must say; the repository is `tmp_path`."""
    affine = onnx_files["affine"].read_bytes()
    cases = {
        "onnx_truncated": (
            "",
            {"1/model.onnx": affine[: len(affine) // 3]},
            "model.onnx is not a loadable ONNX model (it does not parse as ONNX; the file is "
            "truncated or corrupt)",
        ),
        "onnx_holding_a_zip": (
            "",
            {"1/model.onnx": torch_files["pt"]},
            "it is a zip archive (as PyTorch and skops files are)",
        ),
        "wrong_extension": (
            'runtime = "onnx"\n',
            {"1/model.pt": torch_files["pt"]},
            "needs a .onnx file",
        ),
        "unknown_extension": ("", {"1/model.onnnx": affine}, "no model file in"),
        "onnx_signature_mismatch": (
            '[[inputs]]\nname = "features"\ndatatype = "FP32"\nshape = [-1, 4]\n',
            {"1/model.onnx": affine},
            "declares input(s) features that the graph lacks",
        ),
        "torch_truncated": (
            torch_signature,
            {"1/model.pt2": torch_files["pt2"].read_bytes()[:1000]},
            "model.pt2 is truncated or not a PyTorch file: it starts as a zip archive but its end "
            "is missing",
        ),
        "torch_signature_mismatch": (
            torch_signature.replace("[-1, 4]", "[-1, 6]"),
            {"1/model.pt": torch_files["pt"]},
            "(RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x6 and 4x3))",
        ),
        "sklearn_corrupt": (
            SKLEARN_SIGNATURE,
            {"1/model.skops": b"PK\x03\x04 not really a skops archive"},
            "model.skops is not a readable skops file",
        ),
    }
    for name, (toml, files, _) in cases.items():
        write_model(tmp_path, name, toml, files)
    write_model(tmp_path, "good", "", {"1/model.onnx": affine})
    return {name: reason for name, (_, _, reason) in cases.items()}


def test_broken_models_are_unavailable_with_their_reason_and_the_rest_serve(
    tmp_path: Path, broken_repo: dict
) -> None:
    client = create_app(Settings(repository=str(tmp_path))).test_client()
    index = client.post("/v2/repository/index").get_json()
    rows = {row["name"]: row for row in index}
    assert rows["good"]["state"] == "READY"
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert client.post("/v2/models/good/infer", json=body).status_code == 200
    for name, reason in broken_repo.items():
        assert rows[name]["state"] == "UNAVAILABLE", name
        assert reason in rows[name]["reason"], (name, rows[name]["reason"])
        metadata = client.get(f"/v2/models/{name}")
        assert reason in metadata.get_json()["reason"], name
        infer = client.post(f"/v2/models/{name}/infer", json=body)
        assert infer.status_code == 503 and reason in infer.get_json()["error"], name

    listing = CliRunner().invoke(main, ["models", str(tmp_path)])
    assert listing.exit_code == 0, listing.output
    assert "good" in listing.output and "x FP32 [-1, 4]" in listing.output
    for name, reason in broken_repo.items():
        assert reason in listing.output, name
