"""Plain Python models: a decorated function, or a `module:Class` named in `model.toml`.

Both are called the same way: one keyword argument per input (a numpy array), returning a dict of
outputs, or a single array when the model has one output, or a tuple in output order. A class may
define `load()` (called once, before serving) and `unload()`. A `predict` that declares a
`parameters` keyword (and has no input of that name) is also given the request's own
`parameters` (V2 and gRPC; `{}` when it sent none), as KServe and MLServer hand their models the
request's parameters; one that does not is called as before.

    # models/echo/model.toml                  # models/echo/1/echo.py
    runtime = "python"                        class Echo:
    entrypoint = "echo:Echo"                      def load(self): ...
    [[inputs]] ...                                def predict(self, x): return {"y": x * 2}

A `predict` that yields (a generator function) makes a streaming text model: it is called with
the prompt as `text_input` (a str) and each piece of text it yields reaches the client as it is
made, counted as one token (see `core.generation.pieces_stream`); its signature is the generative
one, `text_input` -> `text_output`.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import ModelLoadError
from flaskserve.core.generation import generative_model, pieces_stream, prompt_of
from flaskserve.core.model import Arrays, GenerationRequest, Model, TensorSpec, TextStream
from flaskserve.runtimes.context import DEFAULT_OPTIONS, RuntimeOptions


def model_from_callable(
    name: str,
    fn: Callable[..., Any],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    version: str = "1",
    max_batch_size: int = 0,
    max_delay_ms: float = 0.0,
    unload: Callable[[], None] | None = None,
) -> Model:
    """Wrap a callable taking one keyword argument per input (and the request's `parameters`,
    when it declares them) as a `Model`."""
    if not inputs or not outputs:
        raise ModelLoadError(
            f"model {name!r}: declare its inputs and outputs (name, datatype, shape)"
        )
    output_names = [spec.name for spec in outputs]
    takes_parameters = _declares_parameters(fn, inputs)

    def predict(arrays: Arrays) -> dict[str, Any]:
        return _as_output_dict(name, fn(**arrays), output_names)

    def predict_with(arrays: Arrays, parameters: Mapping[str, Any]) -> dict[str, Any]:
        return _as_output_dict(name, fn(**arrays, parameters=dict(parameters)), output_names)

    return Model(
        name=name,
        version=version,
        inputs=list(inputs),
        outputs=list(outputs),
        predict_fn=predict_with if takes_parameters else predict,
        platform="python",
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        unload_fn=unload,
        takes_parameters=takes_parameters,
    )


def _declares_parameters(fn: Callable[..., Any], inputs: Sequence[TensorSpec]) -> bool:
    """Whether `fn` names a `parameters` keyword (not merely `**kwargs`) that is no input."""
    if any(spec.name == "parameters" for spec in inputs):
        return False
    try:
        declared = inspect.signature(fn).parameters.get("parameters")
    except (TypeError, ValueError):  # a callable without a signature Python can read
        return False
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return declared is not None and declared.kind in keyword


def _as_output_dict(name: str, result: Any, output_names: list[str]) -> dict[str, Any]:
    if isinstance(result, dict):
        return result
    if isinstance(result, tuple):
        if len(result) != len(output_names):
            raise TypeError(
                f"model {name!r} returned {len(result)} values for {len(output_names)} outputs"
            )
        return dict(zip(output_names, result, strict=True))
    if len(output_names) == 1:
        return {output_names[0]: result}
    raise TypeError(f"model {name!r} has several outputs; return a dict keyed by output name")


def load(
    config: ModelConfig, version: str, path: Path, options: RuntimeOptions = DEFAULT_OPTIONS
) -> Model:
    """Import `entrypoint` ("module:Class") from the version folder and wrap an instance."""
    entrypoint = config.option("entrypoint")
    if not isinstance(entrypoint, str) or ":" not in entrypoint:
        raise ModelLoadError('a python model needs entrypoint = "module:Class" in model.toml')
    module_name, _, attr = entrypoint.partition(":")
    module = _import(module_name, config.name, version, path)
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelLoadError(f"{module_name} has no attribute {attr!r}")
    instance = factory()
    if hasattr(instance, "load"):
        instance.load()
    predict = getattr(instance, "predict", None)
    if predict is None:
        raise ModelLoadError(f"{entrypoint} has no predict method")
    if inspect.isgeneratorfunction(predict):
        return streaming_model(
            config.name, predict, version, unload=getattr(instance, "unload", None)
        )
    return model_from_callable(
        config.name,
        predict,
        config.inputs,
        config.outputs,
        version=version,
        max_batch_size=config.max_batch_size,
        max_delay_ms=config.max_delay_ms,
        unload=getattr(instance, "unload", None),
    )


def _import(module_name: str, model: str, version: str, path: Path) -> Any:
    """A module file in the version folder, imported under a private name; or an installed one."""
    file = path / (module_name.replace(".", "/") + ".py")
    if not file.is_file():
        try:
            return importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(
                f"no {file.name} in {path} and no installed module {module_name!r} ({exc})"
            ) from None
    unique = f"flaskserve_models.{model}.v{version}.{module_name}"
    spec = importlib.util.spec_from_file_location(unique, file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(unique, None)
        raise ModelLoadError(f"importing {file.name} failed: {type(exc).__name__}: {exc}") from None
    return module


def streaming_model(
    name: str,
    fn: Callable[..., Any],
    version: str = "1",
    unload: Callable[[], None] | None = None,
) -> Model:
    """Wrap a generator function `fn(text_input=prompt)` yielding text pieces as a generative
    model; closing its stream closes the generator (its `finally` blocks run)."""

    def generate(request: GenerationRequest) -> TextStream:
        prompt = prompt_of(request)
        return pieces_stream(fn(text_input=prompt), request, len(prompt.split()))

    return generative_model(name, version, generate, "python", unload_fn=unload)
