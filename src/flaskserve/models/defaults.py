"""Builds the default model repository once into the cache, then reuses it.

The folder is keyed by the flaskserve and scikit-learn versions (a model saved by one sklearn may
not load in another) and by a digest of the recipes (the model.toml texts and the training
settings), so a changed recipe builds afresh instead of serving a stale cache. It is built in a
temporary folder and renamed into place, under a file lock, so several workers starting at once
build it once and never see half of it. The MiniLM embedding model joins digits when the `nlp`
extra is installed; its folder name then differs, so installing the extra later adds it instead
of reusing the digits-only folder.

Building takes seconds to a minute (digits trains; MiniLM is exported to ONNX once, in a child
process so the server's master never imports torch), so each step says what it does: one line
when it starts and one when it ends, and on a terminal a count of the seconds in between.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

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
        with step("training the digits model on scikit-learn's bundled digits") as done:
            accuracy = digits.build(staging / "digits")
            done(f"held-out accuracy {accuracy:.3f}")
        if with_nlp:
            minilm.build(staging / "minilm")
            with step("exporting MiniLM to ONNX once (it is cached for the next start)") as done:
                done(_export_minilm(root.parent))
        if with_nlp and scribe.available():
            with step("building the scribe text generator from packaged text"):
                scribe.build(staging / "scribe")
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _export_minilm(cache_dir: Path) -> str:
    """Export MiniLM into the cache the workers read, in a child process (torch stays out of
    the master, which the workers are forked from); a failure leaves it to the workers."""
    code = (
        "import sys; from pathlib import Path; from flaskserve.models import minilm; "
        "from flaskserve.runtimes.sentence_onnx import export_dir; "
        "from flaskserve.runtimes.sentence_transformers import _package_folder; "
        "export_dir(_package_folder(minilm.PACKAGE), Path(sys.argv[1]))"
    )
    child = subprocess.run([sys.executable, "-c", code, str(cache_dir)], capture_output=True,
                           text=True, timeout=1800)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return f"not exported ({last}); the workers load it as they can"
    return "exported"


@contextmanager
def step(what: str, out: TextIO | None = None) -> Iterator[Callable[[str], None]]:
    """Say that `what` starts and how it ended; yields a function taking the outcome."""
    stream = out if out is not None else sys.stdout
    outcome = ["done"]
    started = time.monotonic()
    stop = threading.Event()
    print(f"flaskserve: {what}...", file=stream, flush=True)
    ticker = None
    if stream.isatty():
        def tick() -> None:
            while not stop.wait(1.0):
                print(f"\r  {time.monotonic() - started:.0f} s", end="", file=stream, flush=True)

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    try:
        yield lambda text: outcome.__setitem__(0, text)
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
            print("\r", end="", file=stream)
        elapsed = time.monotonic() - started
        print(f"flaskserve: {what}: {outcome[0]} ({elapsed:.1f} s)", file=stream, flush=True)
