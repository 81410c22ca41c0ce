"""scikit-learn models load safely from skops, and pickles only when trusted."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LinearRegression, LogisticRegression

from flaskserve.core.config import read_model_config
from flaskserve.core.errors import ModelLoadError
from flaskserve.runtimes import sklearn as sklearn_runtime


def save(tmp_path: Path, estimator, filename: str, toml: str = 'runtime = "sklearn"\n') -> Path:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "model.toml").write_text(toml)
    if filename.endswith(".skops"):
        skops.io.dump(estimator, tmp_path / "m" / "1" / filename)
    else:
        joblib.dump(estimator, tmp_path / "m" / "1" / filename)
    return tmp_path / "m"


def load(model_dir: Path):
    return sklearn_runtime.load(read_model_config(model_dir), "1", model_dir / "1")


@pytest.fixture(scope="module")
def classifier():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 3))
    labels = (features[:, 0] > 0).astype(int) + (features[:, 1] > 0).astype(int)
    return LogisticRegression().fit(features, labels), features


def test_classifier_signature_is_inferred_and_predictions_match(tmp_path, classifier) -> None:
    estimator, features = classifier
    model = load(save(tmp_path, estimator, "model.skops"))
    assert [s.as_metadata() for s in model.inputs] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 3]}
    ]
    assert [(s.name, s.datatype, list(s.shape)) for s in model.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 3]),
    ]
    out = model.predict({"input": features[:5]})
    assert out["label"].tolist() == estimator.predict(features[:5]).tolist()
    np.testing.assert_allclose(out["probabilities"], estimator.predict_proba(features[:5]))


def test_regressor_signature_has_one_prediction_output(tmp_path) -> None:
    features = np.arange(20, dtype=float).reshape(10, 2)
    model = load(save(tmp_path, LinearRegression().fit(features, features.sum(axis=1)), "m.skops"))
    assert [s.name for s in model.outputs] == ["prediction"]
    np.testing.assert_allclose(model.predict({"input": features[:2]})["prediction"], [1.0, 5.0])


def test_pickles_are_refused_unless_trusted(tmp_path, classifier) -> None:
    model_dir = save(tmp_path, classifier[0], "model.joblib")
    with pytest.raises(ModelLoadError, match="trust_pickle = true"):
        load(model_dir)
    (model_dir / "model.toml").write_text('runtime = "sklearn"\ntrust_pickle = true\n')
    assert load(model_dir).predict({"input": classifier[1][:1]})["label"].shape == (1,)


def test_a_corrupt_skops_file_is_a_load_error(tmp_path, classifier) -> None:
    model_dir = save(tmp_path, classifier[0], "model.skops")
    path = model_dir / "1" / "model.skops"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="not a readable skops file"):
        load(model_dir)


def test_untrusted_types_in_a_skops_file_are_named(tmp_path) -> None:
    import operator

    from sklearn.preprocessing import FunctionTransformer

    model_dir = save(
        tmp_path,
        FunctionTransformer(operator.neg).fit(np.ones((2, 2))),
        "model.skops",
        'runtime = "sklearn"\n[methods]\nprediction = "transform"\n'
        '[[inputs]]\nname = "input"\ndatatype = "FP64"\nshape = [-1, 2]\n'
        '[[outputs]]\nname = "prediction"\ndatatype = "FP64"\nshape = [-1, 2]\n',
    )
    with pytest.raises(ModelLoadError, match=r"_operator\.neg"):
        load(model_dir)
    toml = (model_dir / "model.toml").read_text()
    (model_dir / "model.toml").write_text('trusted_types = ["_operator.neg"]\n' + toml)
    np.testing.assert_allclose(
        load(model_dir).predict({"input": np.zeros((1, 2))})["prediction"], 0
    )


def test_an_output_without_a_known_method_must_be_named(tmp_path, classifier) -> None:
    toml = 'runtime = "sklearn"\n[[outputs]]\nname = "whatever"\ndatatype = "INT64"\nshape = [-1]\n'
    with pytest.raises(ModelLoadError, match="say which estimator method"):
        load(save(tmp_path, classifier[0], "model.skops", toml))


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_regression_answers_exactly_what_sklearn_answers(tmp_path, classes) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 4)).astype(np.float32)
    labels = np.digitize(features[:, 0] + features[:, 1], [-0.5, 0.5][: classes - 1])
    estimator = LogisticRegression().fit(features, np.array(["a", "b", "c"])[labels])
    model = load(save(tmp_path, estimator, "model.skops"))
    out = model.predict({"input": features})
    assert out["label"].tolist() == estimator.predict(features).tolist()
    np.testing.assert_allclose(out["probabilities"], estimator.predict_proba(features), atol=1e-6)
