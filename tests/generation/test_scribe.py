"""The embedded `scribe` generator: built offline from installed text, it streams English-like
text through the transformers runtime."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flaskserve.core.config import read_model_config
from flaskserve.core.generation import collect
from flaskserve.core.model import GenerationRequest
from flaskserve.models import scribe
from flaskserve.runtimes.registry import load_model

pytestmark = pytest.mark.slow  # builds the model (about 15 s)

COMMON_WORDS = {"the", "a", "of", "to", "is", "and", "in", "for", "be", "data", "that", "or"}


def test_scribe_builds_offline_and_writes_recognisable_text(tmp_path: Path) -> None:
    folder = tmp_path / "scribe"
    scribe.build(folder)
    model = load_model(read_model_config(folder), "1", folder / "1")
    try:
        texts = [
            collect(
                model.generate(
                    GenerationRequest(prompt=prompt, max_tokens=60, temperature=0.7, seed=seed)
                )
            )[0]
            for seed, prompt in enumerate(["The data set", "Return the", "This function"])
        ]
    finally:
        model.unload()
    text = " ".join(texts)
    letters = sum(char.isalpha() or char in " .,;:'\"()-\n" for char in text)
    assert letters / max(len(text), 1) > 0.85, text
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) > 20 and sum(word in COMMON_WORDS for word in words) >= 5, text
