"""What the server tells every runtime when it loads a model: settings arrive as this argument,
never through `flaskserve.settings` or environment variables (runtimes sit below the settings
layer, and a runtime used from a notebook has no server settings at all)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RuntimeOptions:
    #: The flaskserve cache folder, where runtimes keep what they derive from a model once (the
    #: sentence-transformers ONNX export); None: no lasting cache, derived files go to a fresh
    #: temporary folder. `create_app` passes `Settings.cache_dir`.
    cache_dir: Path | None = None


DEFAULT_OPTIONS = RuntimeOptions()
