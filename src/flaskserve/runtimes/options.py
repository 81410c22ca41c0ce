"""Typed, checked reads of runtime settings from `model.toml` (`device`, thread counts, choices).

Every runtime reads its knobs through these helpers so a typo such as `device = "gpu"` or
`intra_op_threads = "4"` becomes a load error that names the key and the values it accepts,
instead of a library exception at the first request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import ModelLoadError
from flaskserve.core.model import Arrays, Model, TensorSpec

#: `device` values: `auto` takes a GPU when the library sees one, else the CPU.
DEVICES = ("cpu", "cuda", "auto")


def choice_option(config: ModelConfig, key: str, choices: Sequence[str], default: str) -> str:
    value = config.option(key, default)
    if value not in choices:
        raise ModelLoadError(
            f"{key} = {value!r} in model.toml; use one of {', '.join(repr(c) for c in choices)}"
        )
    return str(value)


def int_option(config: ModelConfig, key: str, minimum: int = 0) -> int | None:
    """An integer setting >= `minimum`, or None when `model.toml` leaves it out."""
    value = config.option(key)
    if value is None:
        return None
    if type(value) is not int or value < minimum:
        raise ModelLoadError(f"{key} in model.toml must be an integer >= {minimum}, got {value!r}")
    return value


def bool_option(config: ModelConfig, key: str, default: bool) -> bool:
    value = config.option(key, default)
    if not isinstance(value, bool):
        raise ModelLoadError(f"{key} in model.toml must be true or false, got {value!r}")
    return value


def device_option(config: ModelConfig) -> str:
    return choice_option(config, "device", DEVICES, "cpu")


def chunk_rows(config: ModelConfig, default: int) -> int:
    """The most rows one predict call of the model gets (`Model.chunk_rows`): `chunk_rows` in
    model.toml when set (0: never chunk), else `max_batch_size` when the model batches, else
    the runtime's `default`. A larger request runs in chunks, so its memory is the chunk's."""
    configured = int_option(config, "chunk_rows")
    if configured is not None:
        return configured
    return config.max_batch_size or default


def configured_model(
    config: ModelConfig,
    version: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    predict: Callable[[Arrays], Mapping[str, Any]],
    platform: str,
    default_chunk_rows: int,
    *,
    parameters: dict[str, Any] | None = None,
    count_tokens: Callable[[list[str]], int] | None = None,
) -> Model:
    """The `Model` a file runtime returns, its name, batching and chunking read from `config`
    the same way by every runtime, so a knob in model.toml means one thing whatever the library
    behind it."""
    return Model(
        name=config.name,
        version=version,
        inputs=inputs,
        outputs=outputs,
        predict_fn=predict,
        platform=platform,
        max_batch_size=config.max_batch_size,
        max_delay_ms=config.max_delay_ms,
        parameters=parameters or {},
        count_tokens=count_tokens,
        chunk_rows=chunk_rows(config, default_chunk_rows),
    )
