"""ONNX models through ONNX Runtime (extra `onnx`).

The version folder holds one `.onnx` file. Its signature is read from the graph: input and
output names, element types as V2 datatypes, and symbolic or unknown dimensions as -1. When
`model.toml` declares `[[inputs]]`/`[[outputs]]` they must agree with the graph (same input names,
outputs among the graph's, same datatypes and ranks, no fixed dimension declared differently):
a signature that does not fit the model is a load error, not a failure at the first request.
Declaring outputs also serves only those, which is how a graph with non-tensor outputs (such as
skl2onnx's ZipMap probabilities) can still serve its tensor outputs.

    device = "cpu"                      # "cuda" (CUDAExecutionProvider) or "auto"
    intra_op_threads = 2                # absent: the server's choice (runtimes/threads.py)
    inter_op_threads = 1
    intra_op_spinning = false           # absent: the server's choice (runtimes/threads.py)
    graph_optimization_level = "all"    # "disable", "basic", "extended" or "all"
    chunk_rows = 64                     # rows per session.run; absent: max_batch_size, else 64
    arena_shrinkage = true              # give the arena's free blocks back after large runs

ONNX Runtime's CPU arena keeps the largest activations a session has run, for good (one
2,000-sentence MiniLM call left a worker 3.6 GiB larger). With `arena_shrinkage`
(the default) a large run (a feed of `SHRINK_AFTER_BYTES` or more; for sentence models,
`sentence_onnx.SHRINK_AFTER_TOKENS` tokens) ends by freeing the arena blocks it no longer uses
(`memory.enable_memory_arena_shrinkage`), and `runtimes/memory.py` makes glibc hand such
large blocks back to the OS; small runs keep reusing the arena, as shrinking after each of them
cost W2 throughput (docs/benchmarks.md). With chunked requests a worker's memory then stays
that of one chunk.

An `InferenceSession` may be run from several threads at once, so `predict` takes no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import InvalidInput, ModelLoadError
from flaskserve.core.model import Arrays, Model, TensorSpec
from flaskserve.runtimes.context import DEFAULT_OPTIONS, RuntimeOptions
from flaskserve.runtimes.files import detail, model_file, sniff
from flaskserve.runtimes.memory import return_large_blocks
from flaskserve.runtimes.options import (
    bool_option,
    choice_option,
    configured_model,
    device_option,
    int_option,
)

log = logging.getLogger("flaskserve.runtimes.onnx")

PLATFORM = "onnxruntime_onnx"
#: Rows per `session.run` when batching is off and model.toml sets no `chunk_rows`.
DEFAULT_CHUNK_ROWS = 64
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Whether idle intra-op threads spin waiting for the next parallel section (ONNX Runtime's
#: default) or sleep, leaving the core to another worker.
ALLOW_SPINNING = "session.intra_op.allow_spinning"
#: Run option: free the CPU arena's unused blocks when a run ends ("cpu:0": the CPU arena).
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
#: A run whose inputs hold at least this many bytes shrinks the arena when it ends.
SHRINK_AFTER_BYTES = 1 << 20

#: ONNX Runtime's type strings for tensors -> V2 datatypes.
DATATYPE_OF_ONNX = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def load(
    config: ModelConfig, version: str, path: Path, options: RuntimeOptions = DEFAULT_OPTIONS
) -> Model:
    file = model_file(path, (".onnx",), "onnx")
    session = create_session(file, config, options)
    inputs = _signature(config.inputs, session.get_inputs(), "input", file.name)
    outputs = _signature(config.outputs, session.get_outputs(), "output", file.name)
    predict = _predictor(session, inputs, outputs, run_options(config))
    return configured_model(
        config, version, inputs, outputs, predict, PLATFORM, DEFAULT_CHUNK_ROWS,
        parameters={"providers": session.get_providers()},
    )


def create_session(
    model: Path, config: ModelConfig, runtime: RuntimeOptions = DEFAULT_OPTIONS
) -> ort.InferenceSession:
    """An `InferenceSession` with the session options and device `model.toml` asks for."""
    device = device_option(config)
    options = session_options(config, runtime)
    providers = providers_for(device)
    try:
        session = ort.InferenceSession(str(model), options, providers=providers)
    except Exception as exc:
        if device == "auto" and CUDA in providers:
            log.warning("CUDA could not run %s (%s); using the CPU", model.name, detail(exc))
            return create_session_on_cpu(model, options)
        raise ModelLoadError(
            f"{model.name} is not a loadable ONNX model ({_reason(model, exc)})"
        ) from None
    if device == "cuda" and CUDA not in session.get_providers():
        raise ModelLoadError(
            f"device = 'cuda' but ONNX Runtime could not start CUDA for {model.name} "
            "(no usable GPU); set device = 'cpu' or 'auto'"
        )
    return session


def create_session_on_cpu(model: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(model), options, providers=[CPU])
    except Exception as exc:
        raise ModelLoadError(
            f"{model.name} is not a loadable ONNX model ({_reason(model, exc)})"
        ) from None


def _reason(model: Path, exc: Exception) -> str:
    """ONNX Runtime's complaint, plus what the file looks like when it did not even parse."""
    if "INVALID_PROTOBUF" in str(exc) or type(exc).__name__ == "InvalidProtobuf":
        return "it does not parse as ONNX; " + (sniff(model) or "the file is truncated or corrupt")
    return detail(exc)


def session_options(
    config: ModelConfig, runtime: RuntimeOptions = DEFAULT_OPTIONS
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    intra = int_option(config, "intra_op_threads") or runtime.intra_op_threads
    inter = int_option(config, "inter_op_threads")
    if intra:
        options.intra_op_num_threads = intra
    if inter:
        options.inter_op_num_threads = inter
    if not bool_option(config, "intra_op_spinning", runtime.intra_op_spinning):
        options.add_session_config_entry(ALLOW_SPINNING, "0")
    level = choice_option(config, "graph_optimization_level", tuple(OPTIMIZATION_LEVELS), "all")
    options.graph_optimization_level = OPTIMIZATION_LEVELS[level]
    return options


def run_options(config: ModelConfig) -> ort.RunOptions | None:
    """The options of a large run: the arena shrinks after it unless model.toml says
    `arena_shrinkage = false` (None: ONNX Runtime's defaults)."""
    if not bool_option(config, "arena_shrinkage", True):
        return None
    return_large_blocks()
    options = ort.RunOptions()
    options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
    return options


def providers_for(device: str) -> list[str]:
    """Execution providers for `device`; `cuda` without CUDA support here is a load error."""
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ModelLoadError(
            "device = 'cuda' but this ONNX Runtime has no CUDA support (providers: "
            f"{', '.join(available)}); install onnxruntime-gpu on a machine with an NVIDIA GPU, "
            "or set device = 'cpu' or 'auto'"
        )
    if device in ("cuda", "auto") and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def _signature(
    declared: tuple[TensorSpec, ...], graph: list[Any], kind: str, file: str
) -> list[TensorSpec]:
    """The graph's tensors, or the declared ones once checked against the graph."""
    found = {arg.name: arg for arg in graph}
    if not declared:
        return [_spec_of(arg, kind, file) for arg in graph]
    names = [spec.name for spec in declared]
    unknown = [name for name in names if name not in found]
    missing = [name for name in found if name not in names] if kind == "input" else []
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"declares {kind}(s) {', '.join(unknown)} that the graph lacks")
        if missing:
            problems.append(f"leaves out graph input(s) {', '.join(missing)}")
        raise ModelLoadError(
            f"model.toml {' and '.join(problems)}; {file} has {kind}s "
            f"{', '.join(_describe(arg) for arg in graph)}"
        )
    for spec in declared:
        _check_declared(spec, _spec_of(found[spec.name], kind, file), kind, file)
    return list(declared)


def _spec_of(arg: Any, kind: str, file: str) -> TensorSpec:
    datatype = DATATYPE_OF_ONNX.get(arg.type)
    if datatype is None:
        hint = ""
        if arg.type.startswith(("seq(", "map(")):
            hint = (
                "; for a skl2onnx classifier convert with options={id(clf): {'zipmap': False}} "
                "(or use `flaskserve convert sklearn-to-onnx`), or declare in model.toml only "
                "the tensor outputs to serve"
            )
        raise ModelLoadError(
            f"{file}: {kind} {arg.name!r} has type {arg.type}, which the V2 protocol cannot "
            f"carry{hint}"
        )
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return TensorSpec(arg.name, datatype, shape)


def _describe(arg: Any) -> str:
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in (arg.shape or []))
    return f"{arg.name} {DATATYPE_OF_ONNX.get(arg.type, arg.type)} [{dims}]"


def _check_declared(spec: TensorSpec, graph: TensorSpec, kind: str, file: str) -> None:
    def mismatch(what: str) -> ModelLoadError:
        return ModelLoadError(
            f"model.toml declares {kind} {spec.name!r} as {spec.datatype} {list(spec.shape)} "
            f"but {file} has {graph.datatype} {list(graph.shape)} ({what})"
        )

    if spec.datatype != graph.datatype:
        raise mismatch("datatypes differ")
    if len(spec.shape) != len(graph.shape):
        raise mismatch("ranks differ")
    for want, have in zip(spec.shape, graph.shape, strict=True):
        if have != -1 and want != have:
            raise mismatch("a fixed dimension differs")


def _predictor(
    session: ort.InferenceSession,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    options: ort.RunOptions | None = None,
) -> Callable[[Arrays], dict[str, np.ndarray]]:
    output_names = [spec.name for spec in outputs]
    text_inputs = {spec.name for spec in inputs if spec.datatype == "BYTES"}
    text_outputs = {spec.name for spec in outputs if spec.datatype == "BYTES"}

    def predict(arrays: Arrays) -> dict[str, np.ndarray]:
        feed = {
            name: _as_strings(name, array) if name in text_inputs else array
            for name, array in arrays.items()
        }
        large = options is not None and sum(a.nbytes for a in feed.values()) >= SHRINK_AFTER_BYTES
        results = session.run(output_names, feed, options if large else None)
        return {
            name: _as_bytes(value) if name in text_outputs else _canonical(value)
            for name, value in zip(output_names, results, strict=True)
        }

    return predict


def _as_strings(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES arrive as `bytes`; ONNX Runtime's string tensors take `str`."""
    try:
        texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.flat]
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r} holds bytes that are not UTF-8 text") from None
    return np.array(texts, dtype=object).reshape(array.shape)


def _canonical(array: np.ndarray) -> np.ndarray:
    """ONNX Runtime returns int64 as numpy's `longlong`, which equals `int64` as a dtype but is a
    different scalar type that JSON encoders (orjson) refuse; view it as the canonical type."""
    canonical = np.dtype(array.dtype.str)
    return array if array.dtype.char == canonical.char else array.view(canonical)


def _as_bytes(array: np.ndarray) -> np.ndarray:
    values = [v.encode("utf-8") if isinstance(v, str) else v for v in array.flat]
    return np.array(values, dtype=object).reshape(array.shape)
