"""`flaskserve convert sklearn-to-onnx`: a checked ONNX version, served next to the original."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flaskserve import convert
from flaskserve.cli import main
from flaskserve.core.repository import READY, ModelRepository
from flaskserve.runtimes.registry import load_model

pytest.importorskip("skl2onnx")


@pytest.fixture
def digits_dir(tmp_path: Path, digits_repo: Path) -> Path:
    """A fresh copy of the session's digits model (training it again takes seconds)."""
    return Path(shutil.copytree(digits_repo / "digits", tmp_path / "digits"))


def test_convert_writes_a_checked_onnx_version_that_the_server_then_serves(
    digits_dir: Path, digits_data
) -> None:
    result = CliRunner().invoke(main, ["convert", "sklearn-to-onnx", str(digits_dir)])
    assert result.exit_code == 0, result.output
    # Progress on stderr, as plain lines (the runner's stream is not a terminal).
    assert result.stderr.splitlines() == [
        "convert: [1/5] loading version 1 (scikit-learn)",
        "convert: [2/5] converting with skl2onnx",
        "convert: [3/5] loading version 2 (ONNX Runtime)",
        "convert: [4/5] comparing both versions on 256 rows", "convert: [5/5] keeping version 2"]
    assert "converted digits version 1 (scikit-learn) to version 2" in result.output
    assert "label: 100.00% equal" in result.output
    assert "probabilities: max abs difference" in result.output
    assert (digits_dir / "2" / "model.onnx").is_file()
    assert (digits_dir / "1" / "model.skops").is_file()
    toml_text = (digits_dir / "model.toml").read_text()
    assert "runtime" not in tomllib.loads(toml_text)
    assert toml_text.startswith("# The digits classifier"), "comments are kept"

    (digits_dir / "model.toml").write_text(
        toml_text + '\n[version_policy]\npolicy = "all"\n', encoding="utf-8"
    )
    repository = ModelRepository(digits_dir.parent, load_model)
    repository.load_all()
    entry = repository.entry("digits")
    assert entry.state == READY
    sk_model, onnx_model = repository.get("digits", "1"), repository.get("digits", "2")
    assert sk_model.platform == "sklearn_LogisticRegression"
    assert onnx_model.platform == "onnxruntime_onnx"
    assert repository.get("digits") is onnx_model
    assert onnx_model.inputs == sk_model.inputs and onnx_model.outputs == sk_model.outputs
    features, _ = digits_data
    expected = sk_model.predict({"input": features})
    got = onnx_model.predict({"input": features})
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-4)


def test_convert_checks_on_rows_given_with_sample(
    digits_dir: Path, digits_data, tmp_path: Path
) -> None:
    features, _ = digits_data
    np.save(tmp_path / "rows.npy", features[:100])
    result = convert.sklearn_to_onnx(digits_dir, sample=tmp_path / "rows.npy")
    assert result.rows == 100 and result.sample == str(tmp_path / "rows.npy")
    assert all(agreement.ok for agreement in result.agreements)


def test_a_conversion_that_disagrees_is_not_kept(
    digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convert, "TOLERANCE", 0.0)
    before = (digits_dir / "model.toml").read_text()
    result = CliRunner().invoke(main, ["convert", "sklearn-to-onnx", str(digits_dir)])
    assert result.exit_code == 1
    assert "disagrees with the scikit-learn one, so it was not kept" in result.output
    assert sorted(p.name for p in digits_dir.iterdir()) == ["1", "model.toml"]
    assert (digits_dir / "model.toml").read_text() == before


def test_a_model_without_a_scikit_learn_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "1").mkdir(parents=True)
    (tmp_path / "empty" / "model.toml").write_text("")
    result = CliRunner().invoke(main, ["convert", "sklearn-to-onnx", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "holds a scikit-learn model" in result.output


def test_a_regressor_keeps_its_served_signature(tmp_path: Path) -> None:
    """skl2onnx gives float32 [N, 1]; the served FP64 [-1] is kept by a cast and a reshape."""
    import skops.io
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    features, target = load_diabetes(return_X_y=True)
    (tmp_path / "ridge" / "1").mkdir(parents=True)
    (tmp_path / "ridge" / "model.toml").write_text('runtime = "sklearn"\n')
    skops.io.dump(Ridge().fit(features, target), tmp_path / "ridge" / "1" / "model.skops")
    np.save(tmp_path / "rows.npy", features[:50])
    result = convert.sklearn_to_onnx(tmp_path / "ridge", sample=tmp_path / "rows.npy")
    assert [a.output for a in result.agreements] == ["prediction"]
    repository = ModelRepository(tmp_path, load_model)
    repository.load_all()
    model = repository.get("ridge")
    assert model.platform == "onnxruntime_onnx"
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [("prediction", "FP64", (-1,))]
    rows = features[:50].astype(np.float32)
    expected = Ridge().fit(features, target).predict(rows)
    np.testing.assert_allclose(model.predict({"input": rows})["prediction"], expected, rtol=1e-4)
