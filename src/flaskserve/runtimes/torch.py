"""PyTorch models (extra `torch`, pinned to `torch==2.13.0`): TorchScript and `torch.export`.

The version folder holds `model.pt` (saved with `torch.jit.script(m).save(...)` or
`torch.jit.trace`) or `model.pt2` (saved with `torch.export.save(torch.export.export(m, ...))`).
Neither format records tensor names or which dimensions are variable, so `model.toml` must
declare the signature; inputs are passed positionally in the declared order, and the module
returns one tensor, a tuple/list in output order, or a dict keyed by output name.

At load, the module is called once with zeros shaped as declared (-1 taken as 2): a signature
that does not fit the model fails the load with the library's reason instead of failing the first
request, and the first request does not pay for lazy initialisation. Set `warmup = false` for a
model that cannot take zeros.

    device = "cpu"     # "cuda" when PyTorch sees a GPU (a load error otherwise) or "auto"
    threads = 2        # torch.set_num_threads (process-wide: the last model loaded sets it);
                       # absent: the server's share per worker (runtimes/threads.py)
    warmup = true
    chunk_rows = 64    # rows per module call; absent: max_batch_size, else 64 (0: no chunks)

Inference runs under `torch.inference_mode()` (no autograd bookkeeping); modules are only read,
so several request threads may call them at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import ModelLoadError
from flaskserve.core.model import Arrays, Model, TensorSpec
from flaskserve.runtimes.context import DEFAULT_OPTIONS, RuntimeOptions
from flaskserve.runtimes.files import detail, model_file, sniff, zip_names
from flaskserve.runtimes.options import bool_option, configured_model, device_option, int_option

PLATFORM_OF_SUFFIX = {".pt": "pytorch_torchscript", ".pt2": "pytorch_export"}
#: Rows per module call when batching is off and model.toml sets no `chunk_rows`.
DEFAULT_CHUNK_ROWS = 64

#: Size given to -1 dimensions when calling the model once at load. Not 1: torch.export
#: specialises dynamic dimensions of size 0 and 1, so 2 is the smallest size that proves a
#: dimension is really variable.
WARMUP_SIZE = 2


def load(
    config: ModelConfig, version: str, path: Path, options: RuntimeOptions = DEFAULT_OPTIONS
) -> Model:
    inputs, outputs = _declared_signature(config)
    file = model_file(path, tuple(PLATFORM_OF_SUFFIX), "torch")
    device = resolve_device(device_option(config))
    threads = int_option(config, "threads", minimum=1) or options.threads
    if threads:
        torch.set_num_threads(threads)
    module = _load_module(file, device)
    predict = _predictor(module, device, inputs, outputs)
    if bool_option(config, "warmup", True):
        _check_signature(predict, inputs, outputs, file.name)
    platform = PLATFORM_OF_SUFFIX[file.suffix]
    return configured_model(
        config, version, inputs, outputs, predict, platform, DEFAULT_CHUNK_ROWS,
        parameters={"device": str(device)},
    )


def resolve_device(choice: str) -> torch.device:
    """`cpu`, `cuda` (a load error when PyTorch sees no GPU) or `auto`."""
    has_gpu = torch.cuda.is_available()
    if choice == "cuda" and not has_gpu:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ModelLoadError(
            f"device = 'cuda' but PyTorch sees no GPU here (torch {torch.__version__}, {build}); "
            "set device = 'cpu' or 'auto'"
        )
    return torch.device("cuda" if choice != "cpu" and has_gpu else "cpu")


def _declared_signature(config: ModelConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if not config.inputs or not config.outputs:
        raise ModelLoadError(
            "a torch model needs its signature in model.toml ([[inputs]] and [[outputs]] with "
            "name, datatype and shape): TorchScript and torch.export files do not record it"
        )
    text = [spec.name for spec in (*config.inputs, *config.outputs) if spec.datatype == "BYTES"]
    if text:
        raise ModelLoadError(
            f"torch models take and return numeric tensors; {', '.join(text)} is BYTES"
        )
    return list(config.inputs), list(config.outputs)


def _load_module(file: Path, device: torch.device) -> Any:
    names = zip_names(file)
    if names is None:
        hint = sniff(file) or "PyTorch files are zip archives and this is not one"
        raise ModelLoadError(f"{file.name} is truncated or not a PyTorch file: {hint}")
    if file.suffix == ".pt" and not any(n.endswith("/constants.pkl") for n in names):
        raise ModelLoadError(
            f"{file.name} is not TorchScript (torch.save writes weights or a pickled module, "
            "which need their Python code); save it with torch.jit.script(model).save(path) "
            "or export it with torch.export to model.pt2"
        )
    try:
        if file.suffix == ".pt":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(file), map_location=device)
            module.eval()
        else:
            module = torch.export.load(str(file)).module().to(device)
    except Exception as exc:
        raise ModelLoadError(f"{file.name} could not be loaded ({detail(exc)})") from None
    return module


def _predictor(
    module: Any, device: torch.device, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> Callable[[Arrays], dict[str, np.ndarray]]:
    input_names = [spec.name for spec in inputs]
    output_names = [spec.name for spec in outputs]

    def predict(arrays: Arrays) -> dict[str, np.ndarray]:
        tensors = [_to_tensor(arrays[name], device) for name in input_names]
        with torch.inference_mode():
            result = module(*tensors)
        return _outputs(result, output_names)

    return predict


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    # Arrays decoded from the binary protocol are views of the request body, which is read-only;
    # torch.from_numpy would share (and could write to) that memory, so those are copied.
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def _outputs(result: Any, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(result, dict):
        missing = [name for name in names if name not in result]
        if missing:
            raise TypeError(
                f"the module returned a dict without {', '.join(missing)} "
                f"(it has {', '.join(map(str, result))})"
            )
        return {name: _to_numpy(result[name]) for name in names}
    if isinstance(result, torch.Tensor):
        result = (result,)
    if not isinstance(result, tuple | list) or len(result) != len(names):
        count = len(result) if isinstance(result, tuple | list) else type(result).__name__
        raise TypeError(f"the module returned {count} values for {len(names)} declared outputs")
    return {name: _to_numpy(value) for name, value in zip(names, result, strict=True)}


def _to_numpy(value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return np.asarray(value.numpy())


def _check_signature(
    predict: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], file: str
) -> None:
    sample = {
        spec.name: np.zeros([WARMUP_SIZE if d == -1 else d for d in spec.shape], spec.dtype)
        for spec in inputs
    }
    shapes = ", ".join(f"{name} {list(a.shape)}" for name, a in sample.items())
    try:
        result = predict(sample)
    except Exception as exc:
        raise ModelLoadError(
            f"{file} does not fit the signature in model.toml: called with zeros shaped "
            f"{shapes} (-1 taken as {WARMUP_SIZE}) it failed ({detail(exc)}); fix [[inputs]] "
            "and [[outputs]], or set warmup = false if the model cannot take zeros"
        ) from None
    for spec in outputs:
        shape = result[spec.name].shape
        fits = len(shape) == len(spec.shape) and all(
            want in (-1, got) for got, want in zip(shape, spec.shape, strict=True)
        )
        if not fits:
            raise ModelLoadError(
                f"model.toml declares output {spec.name!r} with shape {list(spec.shape)} but "
                f"{file} returned {list(shape)} for inputs {shapes}"
            )
