"""A tiny causal language model (random weights, a tokenizer trained on a few lines), built once
per session with `flaskserve.models.textgen`, and a repository serving it as `tiny`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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


#: Python streaming models: `gated` yields "first ", then waits for the file its prompt names
#: before "second" (so a test can see a token arrive before the next one exists); `endless`
#: yields "tick " until its stream is closed, then writes the file its prompt names; `flood`
#: the same with 64 KiB pieces and no pause, to fill a connection nobody reads.
STREAMERS_PY = '''\
import time
from pathlib import Path


class Gated:
    def predict(self, text_input):
        yield "first "
        gate = Path(text_input.strip())
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "second"


class Endless:
    def predict(self, text_input):
        try:
            while True:
                yield "tick "
                time.sleep(0.02)
        finally:
            Path(text_input.strip()).write_text("closed")


class Flood:
    def predict(self, text_input):
        try:
            while True:
                yield "x" * 65536
        finally:
            Path(text_input.strip()).write_text("closed")
'''


@pytest.fixture(scope="session")
def gen_repo(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path) -> Path:
    """`tiny` (the transformers model) and the Python streamers `gated` and `endless`."""
    root = tmp_path_factory.mktemp("gen-served")
    shutil.copytree(tiny_lm, root / "tiny" / "1")
    (root / "tiny" / "model.toml").write_text(TINY_TOML, encoding="utf-8")
    for name, cls in (("gated", "Gated"), ("endless", "Endless"), ("flood", "Flood")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "streamers.py").write_text(STREAMERS_PY, encoding="utf-8")
        (root / name / "model.toml").write_text(
            f'runtime = "python"\nentrypoint = "streamers:{cls}"\n', encoding="utf-8"
        )
    return root
