"""What the server tells every runtime when it loads a model: settings arrive as this argument,
never through `flaskserve.settings` or environment variables (runtimes sit below the settings
layer, and a runtime used from a notebook has no server settings at all)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RuntimeOptions:
    """Defaults of the knobs a model's model.toml may set itself; the model.toml value wins.
    `create_app` fills them from `Settings` (app.py `runtime_options`, policy in
    runtimes/threads.py); these defaults are the libraries' own, for use outside a server."""

    #: The flaskserve cache folder, where runtimes keep what they derive from a model once (the
    #: sentence-transformers ONNX export); None: no lasting cache, derived files go to a fresh
    #: temporary folder. `create_app` passes `Settings.cache_dir`.
    cache_dir: Path | None = None
    #: PyTorch's threads in this process (model.toml `threads`, `torch.set_num_threads`);
    #: 0: PyTorch's default, one per core.
    threads: int = 0
    #: Each ONNX Runtime session's intra-op threads (model.toml `intra_op_threads`); 0: ONNX
    #: Runtime's default, one per core.
    intra_op_threads: int = 0
    #: Whether those threads spin while waiting for work (model.toml `intra_op_spinning`; ONNX
    #: Runtime's default) or sleep, leaving the core to another worker.
    intra_op_spinning: bool = True


DEFAULT_OPTIONS = RuntimeOptions()
