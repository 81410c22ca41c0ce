"""Picks the runtime for a model version and imports it only when a model needs it.

Runtimes for optional libraries (ONNX Runtime, PyTorch, sentence-transformers) live behind pip
extras; importing them lazily keeps a digits-only server light and turns a missing extra into a
load error that names the extra to install.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from flaskserve.core.config import ModelConfig, guess_runtime
from flaskserve.core.errors import ModelLoadError
from flaskserve.core.model import Model
from flaskserve.core.observers import LoadObserver, current
from flaskserve.core.repository import Loader
from flaskserve.runtimes.context import DEFAULT_OPTIONS, RuntimeOptions
from flaskserve.runtimes.memory import release_free_memory

#: runtime name -> (module that loads it, pip extra that provides its library or None)
RUNTIMES: dict[str, tuple[str, str | None]] = {
    "sklearn": ("flaskserve.runtimes.sklearn", None),
    "python": ("flaskserve.runtimes.python", None),
    "onnx": ("flaskserve.runtimes.onnx", "onnx"),
    "torch": ("flaskserve.runtimes.torch", "torch"),
    "sentence_transformers": ("flaskserve.runtimes.sentence_transformers", "nlp"),
    "transformers": ("flaskserve.runtimes.text_generation", "nlp"),
}


def loader(options: RuntimeOptions, observer: LoadObserver | None = None) -> Loader:
    """The repository's loader: `load_model` with the server's options, reporting load times
    to `observer` (default: the process's, `core.observers`)."""

    def load(config: ModelConfig, version: str, path: Path) -> Model:
        return load_model(config, version, path, options, observer)

    return load


def load_model(
    config: ModelConfig,
    version: str,
    path: Path,
    options: RuntimeOptions = DEFAULT_OPTIONS,
    observer: LoadObserver | None = None,
) -> Model:
    """Load one version folder with the runtime `model.toml` names (or its files imply)."""
    runtime = config.runtime or guess_runtime(path)
    if runtime not in RUNTIMES:
        raise ModelLoadError(
            f"unknown runtime {runtime!r}; use one of {', '.join(sorted(RUNTIMES))}"
        )
    module_name, extra = RUNTIMES[runtime]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: pip install 'flaskserve[{extra}]'" if extra else ""
        raise ModelLoadError(
            f"runtime {runtime!r} is not installed ({exc.name} missing){hint}"
        ) from None
    started = time.perf_counter()
    model: Model = module.load(config, version, path, options)
    (observer or current()).loaded(config.name, version, time.perf_counter() - started)
    release_free_memory()  # what the load parsed and freed (runtimes/memory.py)
    return model
