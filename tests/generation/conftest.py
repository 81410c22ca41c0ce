"""A tiny causal language model (random weights, a tokenizer trained on a few lines), built once
per session with `flaskserve.models.textgen`, and a repository serving it as `tiny`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from python_models import write_streamer

pytest.importorskip("transformers")

TEXTS = [
    "flaskserve turns a trained model into a production HTTP service with one command.",
    "The quick brown fox jumps over the lazy dog, then streams tokens to every client.",
    "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9: text with accents and an emoji \U0001f600.",
] * 4

TINY_TOML = 'runtime = "transformers"\nmax_tokens = 48\nthreads = 1\n'


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The version folder of the tiny model, as `save_pretrained` wrote it."""
    from flaskserve.models.textgen import build_lm

    folder = tmp_path_factory.mktemp("tiny-lm") / "1"
    build_lm(folder, TEXTS, vocab_size=300, hidden_size=32, layers=2, context=128)
    return folder


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path) -> Path:
    """A model repository serving the tiny model as `tiny`."""
    root = tmp_path_factory.mktemp("gen-repo")
    shutil.copytree(tiny_lm, root / "tiny" / "1")
    (root / "tiny" / "model.toml").write_text(TINY_TOML, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def gen_repo(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path) -> Path:
    """`tiny` (the transformers model) and the Python streamers `gated` and `endless`."""
    root = tmp_path_factory.mktemp("gen-served")
    shutil.copytree(tiny_lm, root / "tiny" / "1")
    (root / "tiny" / "model.toml").write_text(TINY_TOML, encoding="utf-8")
    for name, cls in (("gated", "Gated"), ("endless", "Endless"), ("flood", "Flood")):
        write_streamer(root, name, cls)
    return root
