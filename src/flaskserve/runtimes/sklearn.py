"""scikit-learn estimators, loaded safely.

skops files are the default because loading them runs no code: skops refuses types outside its
trusted set unless `model.toml` lists them in `trusted_types`. Pickle-based `.joblib`/`.pkl` files
can run anything when loaded, so they load only with `trust_pickle = true`.

Outputs map to estimator methods by name (`label`/`prediction` -> predict, `probabilities` ->
predict_proba, `scores` -> decision_function); `[methods]` in `model.toml` names others. When
`model.toml` declares no signature it is inferred from the fitted estimator.

A request runs in chunks of at most `max_batch_size` rows (1024 when batching is off; the
`chunk_rows` option sets another count, 0 none): see `core.batching.predict_chunked`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import InvalidInput, ModelLoadError
from flaskserve.core.model import Arrays, Model, TensorSpec
from flaskserve.runtimes.context import DEFAULT_OPTIONS, RuntimeOptions
from flaskserve.runtimes.options import configured_model
from flaskserve.runtimes.skops_import import import_skops_io

SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".joblib", ".pkl")
#: Rows per predict call when batching is off and model.toml sets no `chunk_rows`: estimators
#: such as k-nearest neighbours or kernel SVMs allocate rows x training samples per call.
DEFAULT_CHUNK_ROWS = 1024

METHOD_OF_OUTPUT = {
    "label": "predict",
    "prediction": "predict",
    "predictions": "predict",
    "probabilities": "predict_proba",
    "scores": "decision_function",
}


def load(
    config: ModelConfig, version: str, path: Path, options: RuntimeOptions = DEFAULT_OPTIONS
) -> Model:
    estimator = load_estimator(config, model_file(config, path))
    inputs = list(config.inputs) or _infer_inputs(estimator)
    outputs = list(config.outputs) or _infer_outputs(estimator)
    if len(inputs) != 1:
        raise ModelLoadError(
            "a scikit-learn model takes exactly one input tensor, model.toml declares "
            f"{len(inputs)}"
        )
    methods = _output_methods(config, estimator, outputs)
    shared = _labels_from_probabilities(estimator, methods)
    input_name = inputs[0].name

    def predict(arrays: Arrays) -> dict[str, Any]:
        features = arrays[input_name]
        if features.dtype.kind == "f" and not np.isfinite(features).all():
            # Binary tensors can carry them; scikit-learn would refuse with a ValueError.
            raise InvalidInput(
                f"input {input_name!r} contains NaN or infinity; scikit-learn models need "
                "finite numbers"
            )
        if shared is not None:
            return shared(features)
        return {name: method(features) for name, method in methods.items()}

    platform = f"sklearn_{type(estimator).__name__}"
    return configured_model(config, version, inputs, outputs, predict, platform, DEFAULT_CHUNK_ROWS)


def model_file(config: ModelConfig, path: Path) -> Path:
    named = config.option("file")
    if named is not None:
        candidate = path / str(named)
        if not candidate.is_file():
            raise ModelLoadError(f"model.toml names file {named!r} but {candidate} does not exist")
        return candidate
    files = sorted(p for p in path.iterdir() if p.suffix in SKOPS_SUFFIXES + PICKLE_SUFFIXES)
    if not files:
        raise ModelLoadError(f"no .skops, .joblib or .pkl file in {path}")
    if len(files) > 1:
        names = ", ".join(p.name for p in files)
        raise ModelLoadError(
            f"{path} holds several model files ({names}); set file = in model.toml"
        )
    return files[0]


def load_estimator(config: ModelConfig, file: Path) -> Any:
    if file.suffix in PICKLE_SUFFIXES:
        if config.option("trust_pickle") is not True:
            raise ModelLoadError(
                f"{file.name} is a pickle, which can run arbitrary code when loaded; save the "
                "model with skops (skops.io.dump) or set trust_pickle = true in model.toml if "
                "you trust its origin"
            )
        import joblib

        try:
            return joblib.load(file)
        except Exception as exc:
            raise ModelLoadError(f"{file.name} could not be unpickled: {exc}") from None
    skops_io = import_skops_io()
    trusted = config.option("trusted_types", [])
    try:
        untrusted = skops_io.get_untrusted_types(file=file)
        not_allowed = sorted(set(untrusted) - set(trusted))
        if not_allowed:
            raise ModelLoadError(
                f"{file.name} contains types that skops does not trust by default: "
                f"{', '.join(not_allowed)}; review them and list them in trusted_types in "
                "model.toml"
            )
        return skops_io.load(file, trusted=untrusted)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{file.name} is not a readable skops file ({type(exc).__name__}: {exc})"
        ) from None


def _infer_inputs(estimator: Any) -> list[TensorSpec]:
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ModelLoadError(
            "the estimator does not record n_features_in_; declare [[inputs]] in model.toml"
        )
    return [TensorSpec("input", "FP32", [-1, int(n_features)])]


def _infer_outputs(estimator: Any) -> list[TensorSpec]:
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return [TensorSpec("prediction", "FP64", [-1])]
    classes = np.asarray(classes)
    label_type = "INT64" if classes.dtype.kind in "iub" else "BYTES"
    outputs = [TensorSpec("label", label_type, [-1])]
    if hasattr(estimator, "predict_proba"):
        outputs.append(TensorSpec("probabilities", "FP32", [-1, len(classes)]))
    return outputs


def _output_methods(
    config: ModelConfig, estimator: Any, outputs: list[TensorSpec]
) -> dict[str, Any]:
    named = config.option("methods", {})
    if not isinstance(named, dict):
        raise ModelLoadError("[methods] in model.toml must map output names to estimator methods")
    methods = {}
    for spec in outputs:
        method_name = named.get(spec.name, METHOD_OF_OUTPUT.get(spec.name))
        if method_name is None:
            raise ModelLoadError(
                f"output {spec.name!r}: say which estimator method gives it, e.g. "
                f'[methods] {spec.name} = "predict"'
            )
        method = getattr(estimator, str(method_name), None)
        if method is None:
            raise ModelLoadError(
                f"output {spec.name!r}: {type(estimator).__name__} has no method {method_name!r}"
            )
        methods[spec.name] = method
    return methods


def _labels_from_probabilities(
    estimator: Any, methods: dict[str, Any]
) -> Callable[[np.ndarray], dict[str, Any]] | None:
    """A fast path for LogisticRegression asked for labels and probabilities.

    Its predict is the argmax of predict_proba, and predict_proba is a softmax (a logistic for
    two classes) of one matrix product. scikit-learn spends most of a small request validating
    its input (about 270 of 300 microseconds for one digits row, measured); the signature checks
    already did that here. The fast path is checked against scikit-learn on a sample when the
    model loads and is used only if both agree.
    """
    from sklearn.linear_model import LogisticRegression

    if not isinstance(estimator, LogisticRegression):
        return None
    by_method = {method.__name__: name for name, method in methods.items()}
    if len(methods) != 2 or set(by_method) != {"predict", "predict_proba"}:
        return None
    label_name, probabilities_name = by_method["predict"], by_method["predict_proba"]
    classes = estimator.classes_
    weights = np.ascontiguousarray(estimator.coef_.T, dtype=np.float64)
    intercept = np.asarray(estimator.intercept_, dtype=np.float64)

    def probabilities(features: np.ndarray) -> np.ndarray:
        scores = features @ weights + intercept
        if scores.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    sample = np.random.default_rng(0).normal(scale=4.0, size=(16, weights.shape[0]))
    if not (
        np.allclose(probabilities(sample), estimator.predict_proba(sample), rtol=1e-6, atol=1e-9)
        and (classes[probabilities(sample).argmax(axis=1)] == estimator.predict(sample)).all()
    ):
        return None

    def both(features: np.ndarray) -> dict[str, Any]:
        computed = probabilities(features)
        return {label_name: classes[computed.argmax(axis=1)], probabilities_name: computed}

    return both
