"""`flaskserve convert sklearn-to-onnx MODEL_DIR`: a scikit-learn version re-saved as ONNX.

The highest scikit-learn version of the model is converted with skl2onnx into a new version
folder (highest + 1) holding `model.onnx`, shaped to serve exactly the old signature: same input
name and datatype, same output names, datatypes and shapes (classifier probabilities as a plain
tensor, not skl2onnx's default ZipMap list of dicts). Both versions are then loaded the way the
server loads them and run on the same rows; the new folder is kept only if every label agrees and
every number is within `TOLERANCE`. Finally `runtime = "sklearn"` is taken out of `model.toml`, so
each version folder's file picks its runtime and the ONNX version is served as the newest.

Why convert: ONNX Runtime has a much smaller per-call overhead than scikit-learn's Python-level
checks, which dominates small batches (docs/runtimes.md has measurements).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flaskserve.core.config import CONFIG_FILE, ModelConfig, guess_runtime, read_model_config
from flaskserve.core.errors import ModelLoadError
from flaskserve.core.model import Model, TensorSpec
from flaskserve.core.signature import conform_outputs
from flaskserve.runtimes import sklearn as sklearn_runtime
from flaskserve.runtimes.registry import load_model

#: Largest difference accepted between the two versions' numeric outputs (absolute and relative).
TOLERANCE = 1e-4
SAMPLE_ROWS = 256
ONNX_FILE = "model.onnx"

#: Which skl2onnx output carries each estimator method's result.
_ONNX_OUTPUT_OF_METHOD = {"predict": 0, "predict_proba": 1}


class ConversionError(Exception):
    """The conversion could not be made or did not agree with the original; nothing was kept."""


@dataclass
class Agreement:
    output: str
    exact: bool
    #: exact outputs: the fraction of equal values; numeric ones: the largest absolute difference.
    measure: float
    ok: bool

    def describe(self) -> str:
        if self.exact:
            return f"{self.output}: {self.measure:.2%} equal"
        return f"{self.output}: max abs difference {self.measure:.2e}"


@dataclass
class Conversion:
    model_dir: Path
    source_version: int
    version: int
    rows: int
    sample: str
    agreements: list[Agreement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"converted {self.model_dir.name} version {self.source_version} (scikit-learn) to "
            f"version {self.version} ({self.model_dir / str(self.version) / ONNX_FILE})",
            f"checked on {self.rows} rows ({self.sample}):",
            *[f"  {agreement.describe()}" for agreement in self.agreements],
            *self.notes,
        ]
        return "\n".join(lines)


#: The steps `sklearn_to_onnx` reports to its `progress` hook.
STEPS = 5


def sklearn_to_onnx(
    model_dir: Path,
    sample: Path | None = None,
    opset: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Conversion:
    """Convert, check and keep the new version; raise `ConversionError` (keeping nothing) if not.
    `progress` hears each of the `STEPS` steps as it begins (`flaskserve.progress.Steps.step`):
    converting a large forest or checking many rows takes a while."""
    step = progress or (lambda text: None)
    try:
        config = read_model_config(model_dir)
    except ModelLoadError as exc:
        raise ConversionError(str(exc)) from None
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    source = _highest_sklearn_version(model_dir, config, versions)
    sk_config = replace(config, runtime="sklearn")
    source_dir = model_dir / str(source)
    step(f"loading version {source} (scikit-learn)")
    try:
        reference = sklearn_runtime.load(sk_config, str(source), source_dir)
        estimator = sklearn_runtime.load_estimator(
            sk_config, sklearn_runtime.model_file(sk_config, source_dir)
        )
    except ModelLoadError as exc:
        raise ConversionError(f"version {source} does not load: {exc}") from None
    step("converting with skl2onnx")
    onnx_model = _convert(estimator, reference, config, opset)
    version = versions[-1] + 1
    rows, sample_text = _sample(sample, reference.inputs[0])
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=model_dir))
    try:
        (staging / ONNX_FILE).write_bytes(onnx_model.SerializeToString())
        step(f"loading version {version} (ONNX Runtime)")
        try:
            candidate = load_model(replace(config, runtime=None), str(version), staging)
        except ModelLoadError as exc:
            raise ConversionError(f"the converted model does not load: {exc}") from None
        step(f"comparing both versions on {len(rows)} rows")
        agreements = _compare(reference, candidate, rows)
        conversion = Conversion(model_dir, source, version, len(rows), sample_text, agreements)
        if not all(agreement.ok for agreement in agreements):
            raise ConversionError(
                "the ONNX version disagrees with the scikit-learn one, so it was not kept:\n"
                + conversion.summary()
            )
        step(f"keeping version {version}")
        os.rename(staging, model_dir / str(version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    conversion.notes = _serve_per_version(model_dir, config, version)
    return conversion


def _highest_sklearn_version(model_dir: Path, config: ModelConfig, versions: list[int]) -> int:
    for version in reversed(versions):
        try:
            runtime = guess_runtime(model_dir / str(version))
        except ModelLoadError:
            continue
        if runtime == "sklearn":
            return version
    raise ConversionError(
        f"no version folder of {model_dir} holds a scikit-learn model (.skops, .joblib or .pkl)"
    )


def _convert(estimator: Any, reference: Model, config: ModelConfig, opset: int | None) -> Any:
    try:
        from onnx import TensorProto, helper
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType
    except ImportError as exc:
        raise ConversionError(
            f"converting needs the onnx extra ({exc.name} missing): pip install 'flaskserve[onnx]'"
        ) from None
    from sklearn.base import is_classifier

    spec = reference.inputs[0]
    input_types = {"FP32": FloatTensorType, "FP64": DoubleTensorType, "INT64": Int64TensorType}
    if spec.datatype not in input_types:
        raise ConversionError(f"input {spec.name!r} is {spec.datatype}; use FP32, FP64 or INT64")
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        model = convert_sklearn(
            estimator,
            initial_types=[(spec.name, input_types[spec.datatype](_onnx_shape(spec)))],
            options=options,
            target_opset=opset,
        )
    except Exception as exc:
        raise ConversionError(
            f"skl2onnx cannot convert {type(estimator).__name__}: {type(exc).__name__}: {exc}"
        ) from None
    graph = model.graph
    produced = list(graph.output)
    served = []
    for out in reference.outputs:
        index = _ONNX_OUTPUT_OF_METHOD.get(_method_of(config, out.name))
        if index is None or index >= len(produced):
            raise ConversionError(
                f"output {out.name!r} comes from {_method_of(config, out.name)!r}, which skl2onnx "
                "does not convert; serve predict or predict_proba outputs"
            )
        served.append(_conform_output(graph, produced[index], out, helper, TensorProto))
    del graph.output[:]
    graph.output.extend(served)
    return model


def _method_of(config: ModelConfig, output: str) -> str:
    named = config.option("methods", {})
    method = named.get(output) if isinstance(named, dict) else None
    return str(method or sklearn_runtime.METHOD_OF_OUTPUT.get(output, ""))


def _onnx_shape(spec: TensorSpec) -> list[int | None]:
    return [None if d == -1 else d for d in spec.shape]


def _conform_output(graph: Any, source: Any, spec: TensorSpec, helper: Any, proto: Any) -> Any:
    """A graph output named and typed as `spec`, computed from skl2onnx's output `source`."""
    want = proto.STRING if spec.datatype == "BYTES" else helper.np_dtype_to_tensor_dtype(spec.dtype)
    have = source.type.tensor_type.elem_type
    rank = len(source.type.tensor_type.shape.dim)
    current = source.name
    if current == spec.name and have == want and rank == len(spec.shape):
        return source
    if have != want:
        graph.node.append(helper.make_node("Cast", [current], [f"{spec.name}_cast"], to=want))
        current = f"{spec.name}_cast"
    if rank != len(spec.shape):
        if not (rank == 2 and len(spec.shape) == 1):
            raise ConversionError(f"output {spec.name!r}: ONNX gives rank {rank}, served is 1")
        flat = helper.make_tensor(f"{spec.name}_flat_shape", proto.INT64, [1], [-1])
        graph.initializer.append(flat)
        graph.node.append(helper.make_node("Reshape", [current, flat.name], [f"{spec.name}_flat"]))
        current = f"{spec.name}_flat"
    graph.node.append(helper.make_node("Identity", [current], [spec.name]))
    return helper.make_tensor_value_info(spec.name, want, _onnx_shape(spec))


def _sample(path: Path | None, spec: TensorSpec) -> tuple[np.ndarray, str]:
    width = spec.shape[1] if len(spec.shape) == 2 else -1
    if path is None:
        if width < 0:
            raise ConversionError(
                f"input {spec.name!r} has no fixed feature count; pass --sample rows.npy"
            )
        rng = np.random.default_rng(0)
        rows = rng.normal(size=(SAMPLE_ROWS, width))
        text = "random normal rows; pass --sample rows.npy to check on real data"
    else:
        try:
            rows = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",")
        except (OSError, ValueError) as exc:
            raise ConversionError(f"cannot read {path}: {exc}") from None
        text = str(path)
    rows = np.atleast_2d(rows)
    if rows.ndim != 2 or (width >= 0 and rows.shape[1] != width):
        raise ConversionError(
            f"sample rows have shape {list(rows.shape)}; input {spec.name!r} needs [-1, {width}]"
        )
    return rows.astype(spec.dtype), text


def _compare(reference: Model, candidate: Model, rows: np.ndarray) -> list[Agreement]:
    name = reference.inputs[0].name
    expected = conform_outputs(reference, reference.predict({name: rows}))
    got = conform_outputs(candidate, candidate.predict({name: rows}))
    agreements = []
    for spec in reference.outputs:
        a, b = expected[spec.name], got[spec.name]
        if spec.datatype in ("FP16", "FP32", "FP64"):
            diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            ok = a.shape == b.shape and bool(np.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE))
            agreements.append(Agreement(spec.name, False, diff, ok))
        else:
            equal = float(np.mean(a == b)) if a.shape == b.shape and a.size else 0.0
            agreements.append(Agreement(spec.name, True, equal, equal == 1.0))
    return agreements


def _serve_per_version(model_dir: Path, config: ModelConfig, version: int) -> list[str]:
    """Drop `runtime = "sklearn"` from model.toml so each version's file picks its runtime."""
    notes = []
    if config.runtime is not None:
        path = model_dir / CONFIG_FILE
        text = path.read_text(encoding="utf-8")
        header = re.search(r"^\s*\[", text, flags=re.M)
        end = header.start() if header else len(text)
        preamble, count = re.subn(
            r"^runtime\s*=.*$",
            "# runtime is left out: each version folder's model file picks it (.skops: sklearn, "
            ".onnx: onnx)",
            text[:end],
            count=1,
            flags=re.M,
        )
        if count != 1:
            raise ConversionError(f"could not find the runtime line in {path}; remove it by hand")
        staged = path.with_suffix(".toml.tmp")
        staged.write_text(preamble + text[end:], encoding="utf-8")
        os.replace(staged, path)
        notes.append(f"removed runtime = {config.runtime!r} from {path}")
    policy = config.version_policy
    if policy.policy == "specific" and version not in policy.versions:
        notes.append(f"add {version} to version_policy.versions in model.toml to serve it")
    else:
        notes.append(f"the server now serves version {version} by default")
    return notes
