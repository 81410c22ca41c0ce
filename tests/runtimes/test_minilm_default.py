"""The embedded `minilm` model joins the default repository when the `nlp` extra is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flaskserve.core.config import read_model_config
from flaskserve.models import defaults, minilm
from flaskserve.runtimes.context import RuntimeOptions
from flaskserve.runtimes.registry import load_model

pytestmark = pytest.mark.slow  # each test trains the digits model into a default repository


@pytest.mark.skipif(not minilm.available(), reason="the nlp extra is not installed")
def test_default_repository_serves_minilm_with_the_nlp_extra(
    session_cache: Path, minilm_export, minilm_reference
) -> None:
    root = defaults.default_repository(session_cache)
    assert root.name.endswith("-nlp")
    assert sorted(p.name for p in root.iterdir()) == ["digits", "minilm", "scribe"]
    config = read_model_config(root / "minilm")
    assert (config.max_batch_size, config.max_delay_ms) == (32, 0.0)
    model = load_model(config, "1", root / "minilm" / "1", RuntimeOptions(session_cache))
    assert model.platform == "sentence_transformers_onnx"
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [
        ("embedding", "FP32", (-1, 384))
    ]
    sentences = ["Embeddings for everyone.", "flaskserve"]
    got = model.predict({"text": np.array([s.encode() for s in sentences], dtype=object)})
    expected = minilm_reference.encode(sentences, convert_to_numpy=True)
    np.testing.assert_allclose(got["embedding"], expected, atol=1e-4)


def test_without_the_nlp_extra_the_default_repository_is_digits_only_in_its_own_folder(
    session_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both folders live in the session's cache, where servers started by other tests find them
    already built."""
    monkeypatch.setattr(minilm, "available", lambda: False)
    light = defaults.default_repository(session_cache)
    assert sorted(p.name for p in light.iterdir()) == ["digits"]
    assert not light.name.endswith("-nlp")
    monkeypatch.setattr(minilm, "available", lambda: True)
    with_nlp = defaults.default_repository(session_cache)
    assert with_nlp != light, "installing the extra later adds minilm instead of reusing"
    assert (with_nlp / "minilm" / "model.toml").is_file()
