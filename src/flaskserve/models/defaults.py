"""Builds the default model repository once into the cache, then reuses it.

The folder is keyed by the flaskserve and scikit-learn versions (a model saved by one sklearn may
not load in another) and by a digest of the recipes (the model.toml texts and the training
settings), so a changed recipe builds afresh instead of serving a stale cache. It is built in a
temporary folder and renamed into place, under a file lock, so several workers starting at once
build it once and never see half of it. The MiniLM embedding model joins digits when the `nlp`
extra is installed; its folder name then differs, so installing the extra later adds it instead
of reusing the digits-only folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from flaskserve.version import __version__


def default_repository(cache_dir: Path) -> Path:
    import sklearn

    from flaskserve.models import minilm

    with_nlp = minilm.available()
    suffix = "-nlp" if with_nlp else ""
    name = f"default-models-{__version__}-sklearn{sklearn.__version__}-{_recipe_digest()}"
    root = cache_dir / (name + suffix)
    if root.is_dir():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".default-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.is_dir():
            _build(root, with_nlp)
    return root


def _recipe_digest() -> str:
    from flaskserve.models import digits, minilm, scribe

    recipe = "\n".join(
        [digits.MODEL_TOML, digits.RECIPE, minilm.MODEL_TOML, scribe.MODEL_TOML, scribe.RECIPE]
    )
    return hashlib.sha256(recipe.encode("utf-8")).hexdigest()[:10]


def _build(root: Path, with_nlp: bool = False) -> None:
    from flaskserve.models import digits, minilm, scribe

    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    try:
        accuracy = digits.build(staging / "digits")
        print(f"flaskserve: built the digits model, held-out accuracy {accuracy:.3f}", flush=True)
        if with_nlp:
            minilm.build(staging / "minilm")
        if with_nlp and scribe.available():
            scribe.build(staging / "scribe")
            print("flaskserve: built the scribe text generator", flush=True)
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
