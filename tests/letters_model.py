"""A Python text model, "letters": one BYTES sentence in, its 26 letter counts out (FP32).

Its signature is an embedding model's (text in, one float vector out), so the playground shows a
text page for it and the OpenAI embeddings route serves it, with no ML library to install.
"""

from __future__ import annotations

from pathlib import Path

from python_models import python_toml, write_python_model

LETTERS_TOML = python_toml(
    "letters:Letters", {"sentence": ("BYTES", [-1])}, {"vector": ("FP32", [-1, 26])}
)
LETTERS_PY = """\
import numpy as np

class Letters:
    def predict(self, sentence):
        out = np.zeros((len(sentence), 26), dtype=np.float32)
        for row, text in enumerate(sentence):
            for char in text.decode("utf-8").lower():
                if "a" <= char <= "z":
                    out[row, ord(char) - ord("a")] += 1
        return out
"""


def write_letters(root: Path) -> None:
    """`root/letters`: the model folder, version 1."""
    write_python_model(root, "letters", LETTERS_TOML, LETTERS_PY)
