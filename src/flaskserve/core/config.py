"""`model.toml`: what a model is, which runtime loads it and which versions are served.

A model folder looks like Triton's, with TOML instead of protobuf text so Python reads it with no
dependency:

    digits/model.toml
    digits/1/model.skops

Everything optional has a default here, in one place, so `model.toml` can be as short as one line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flaskserve.core.errors import ModelLoadError
from flaskserve.core.model import TensorSpec

CONFIG_FILE = "model.toml"

#: Which runtime a version folder needs, judged by the model file in it.
RUNTIME_OF_SUFFIX = {
    ".skops": "sklearn",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".onnx": "onnx",
    ".pt": "torch",
    ".pt2": "torch",
}


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the numeric version folders are served: `latest` N, `all`, or `specific`."""

    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.policy == "all":
            return ordered
        if self.policy == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :]

    @classmethod
    def from_mapping(cls, table: dict[str, Any]) -> VersionPolicy:
        policy = table.get("policy", "latest")
        if policy not in ("latest", "all", "specific"):
            raise ModelLoadError(
                f"version_policy.policy is {policy!r}; use 'latest', 'all' or 'specific'"
            )
        num_versions = table.get("num_versions", 1)
        if type(num_versions) is not int or num_versions < 1:
            raise ModelLoadError("version_policy.num_versions must be an integer >= 1")
        versions = table.get("versions", [])
        if not isinstance(versions, list) or not all(type(v) is int for v in versions):
            raise ModelLoadError("version_policy.versions must be a list of integers")
        if policy == "specific" and not versions:
            raise ModelLoadError("version_policy 'specific' needs versions = [...]")
        return cls(policy, num_versions, tuple(versions))


@dataclass(frozen=True)
class ModelConfig:
    """The parsed `model.toml` of one model (or the settings of a model registered in Python)."""

    name: str
    runtime: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    max_batch_size: int = 0
    max_delay_ms: float = 0.0
    #: Rows one request may carry for this model; None: the server's `--max-batch-rows`.
    max_request_rows: int | None = None
    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, key: str, default: Any = None) -> Any:
        """A runtime-specific setting from `model.toml` (e.g. `trust_pickle`, `device`)."""
        return self.options.get(key, default)


_KNOWN_KEYS = {
    "name", "runtime", "inputs", "outputs", "version_policy", "batching", "max_request_rows",
}


def read_model_config(model_dir: Path) -> ModelConfig:
    """Parse `model_dir/model.toml`; every mistake becomes a `ModelLoadError` naming the key."""
    path = model_dir / CONFIG_FILE
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{CONFIG_FILE} is not valid TOML: {exc}") from None
    return config_from_mapping(table, default_name=model_dir.name, path=model_dir)


def config_from_mapping(
    table: dict[str, Any], default_name: str, path: Path | None = None
) -> ModelConfig:
    name = table.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise ModelLoadError(f"model name {name!r} must be a non-empty string without '/'")
    runtime = table.get("runtime")
    if runtime is not None and not isinstance(runtime, str):
        raise ModelLoadError("runtime must be a string such as 'sklearn' or 'python'")
    batching = table.get("batching", {})
    if not isinstance(batching, dict):
        raise ModelLoadError("[batching] must be a table")
    max_batch_size = batching.get("max_batch_size", 0)
    max_delay_ms = batching.get("max_delay_ms", 0.0)
    if type(max_batch_size) is not int or max_batch_size < 0:
        raise ModelLoadError("batching.max_batch_size must be an integer >= 0")
    if not isinstance(max_delay_ms, int | float) or max_delay_ms < 0:
        raise ModelLoadError("batching.max_delay_ms must be a number >= 0")
    max_request_rows = table.get("max_request_rows")
    if max_request_rows is not None and (type(max_request_rows) is not int or max_request_rows < 0):
        raise ModelLoadError("max_request_rows must be an integer >= 0 (0: no limit)")
    policy = table.get("version_policy", {})
    if not isinstance(policy, dict):
        raise ModelLoadError("[version_policy] must be a table")
    return ModelConfig(
        name=name,
        runtime=runtime,
        inputs=_tensors(table, "inputs"),
        outputs=_tensors(table, "outputs"),
        version_policy=VersionPolicy.from_mapping(policy),
        max_batch_size=max_batch_size,
        max_delay_ms=float(max_delay_ms),
        max_request_rows=max_request_rows,
        path=path,
        options={k: v for k, v in table.items() if k not in _KNOWN_KEYS},
    )


def _tensors(table: dict[str, Any], key: str) -> tuple[TensorSpec, ...]:
    entries = table.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ModelLoadError(f"{key} must be an array of tables ([[{key}]])")
    return tuple(TensorSpec.from_mapping(entry) for entry in entries)


def guess_runtime(version_dir: Path) -> str:
    """The runtime for a version folder whose `model.toml` names none."""
    found = sorted(
        {
            RUNTIME_OF_SUFFIX[p.suffix]
            for p in version_dir.iterdir()
            if p.suffix in RUNTIME_OF_SUFFIX
        }
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadError(
            f"no model file in {version_dir} ({', '.join(RUNTIME_OF_SUFFIX)}); "
            "add one or set runtime in model.toml"
        )
    raise ModelLoadError(
        f"{version_dir} holds files for several runtimes ({', '.join(found)}); "
        "set runtime in model.toml"
    )
