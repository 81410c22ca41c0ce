"""`scribe`: the embedded default generative model, a small causal language model made here,
offline, from English that ships with the installed packages: the dataset descriptions bundled
with scikit-learn and the docstrings of Python's own standard library.

Nothing is downloaded. A byte-level BPE tokenizer (1,024 tokens) is trained on that text with
`tokenizers`; the model is a one-layer Llama whose weights hold the text's token bigram
statistics (`textgen.build_lm(bigram_start=True)`), saved with `save_pretrained`. Building takes
about 15 s on two cores, once, into the cache like the other defaults (`models/defaults.py`).

Why bigrams written into the weights, not a minute of gradient descent: measured on the shared
two-core machine this was built on, a minute of training reached 9 to 32 steps (loss 5.1 to 6.3,
output of fragments such as "tl,ings,t."), and training after the bigram start made it worse at
that step count; the bigram weights give text such as "The data set, the standard def-s to the
given, the deviour." It shows streaming, batching and token metering, not knowledge. It is a
default model only where the `nlp` extra (transformers, torch) is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

#: Seconds of gradient training after the bigram start (see above: 0 on purpose); part of the
#: recipe, and so of the cache key.
TRAIN_SECONDS = 0.0
#: The standard library modules whose docstrings are part of the training text.
STDLIB_MODULES = (
    "textwrap", "string", "json", "pathlib", "collections", "itertools", "functools",
    "argparse", "logging", "csv", "datetime", "random", "statistics", "shutil", "subprocess",
    "threading", "queue", "urllib.parse", "email.message", "http.client", "zipfile", "tarfile",
)

MODEL_TOML = """\
# A small causal language model trained at build time (a minute, two cores) on the dataset
# descriptions of scikit-learn and the docstrings of Python's standard library: it streams
# English-like text. Served by the transformers runtime with continuous batching.
runtime = "transformers"
max_tokens = 200
# One torch thread: the batch's loop, the HTTP threads and the clients share the cores, and a
# second intra-op thread waiting for a busy core cost more than it gave (docs/benchmarks.md).
threads = 1
"""

RECIPE = (
    f"Llama hidden=1024 mlp=64 layers=1 heads=4 ctx=256 vocab=1024 BPE; bigram start; batch 16x64; "
    f"AdamW 1e-3; "
    f"{TRAIN_SECONDS}s; "
    f"sklearn descr + docstrings of {','.join(STDLIB_MODULES)}"
)

REQUIRED_MODULES = ("transformers", "torch", "tokenizers")


def available() -> bool:
    """Whether the `nlp` extra is installed, judged without importing torch."""
    return all(importlib.util.find_spec(module) is not None for module in REQUIRED_MODULES)


def corpus() -> list[str]:
    """The training text: paragraphs of English from the installed packages."""
    import sklearn.datasets

    texts: list[str] = []
    descr = Path(sklearn.datasets.__file__).parent / "descr"
    for path in sorted(descr.glob("*.rst")):
        texts.extend(_paragraphs(path.read_text(encoding="utf-8")))
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        for _, member in sorted(vars(module).items()):
            doc = inspect.getdoc(member) if callable(member) else None
            if doc and getattr(member, "__module__", None) == module.__name__:
                texts.extend(_paragraphs(doc))
    return texts


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs: joined lines, without tables, code and markup-only lines."""
    out = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.splitlines()]
        if not lines or any(line.startswith((">>>", "..", "=", "-", "|", ":")) for line in lines):
            continue
        paragraph = " ".join(lines)
        if len(paragraph) > 40 and paragraph.count(" ") > 5:
            out.append(paragraph)
    return out


def build(model_dir: Path, train_seconds: float = TRAIN_SECONDS) -> dict[str, float]:
    """Train and save `scribe` into `model_dir` (model.toml and version 1)."""
    from flaskserve.models.textgen import build_lm

    reached = build_lm(
        model_dir / "1",
        corpus(),
        vocab_size=1024,
        hidden_size=1024,
        layers=1,
        context=256,
        train_seconds=train_seconds,
        bigram_start=True,
    )
    (model_dir / "model.toml").write_text(MODEL_TOML, encoding="utf-8")
    return reached
