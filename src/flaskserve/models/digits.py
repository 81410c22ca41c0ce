"""W1 `digits`: a scikit-learn classifier trained on the 8x8 digits bundled with scikit-learn.

The data ships inside scikit-learn, so building needs no download. Pixels are 0..16 as in
`load_digits`; the playground downsamples a drawing to the same scale.
"""

from __future__ import annotations

from pathlib import Path

MODEL_TOML = """\
# The digits classifier: 8x8 images as 64 pixel values in 0..16 (sklearn.datasets.load_digits).
runtime = "sklearn"

[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 64]

[[outputs]]
name = "label"
datatype = "INT64"
shape = [-1]

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 10]

[batching]
max_batch_size = 64
max_delay_ms = 0
"""

MIN_ACCURACY = 0.95
#: What `build` trains; part of the default repository's cache key, so edit it with `build`.
RECIPE = "LogisticRegression(C=0.01, max_iter=5000), test_size=0.25, random_state=0, stratified"


def build(model_dir: Path) -> float:
    """Train, check and save the model into `model_dir`; returns its held-out accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from flaskserve.runtimes.skops_import import import_skops_io

    features, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=0.25, random_state=0, stratify=labels
    )
    classifier = LogisticRegression(C=0.01, max_iter=5000).fit(train_x, train_y)
    accuracy = float(classifier.score(test_x, test_y))
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"digits accuracy {accuracy:.3f} is below {MIN_ACCURACY}")
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "model.toml").write_text(MODEL_TOML, encoding="utf-8")
    import_skops_io().dump(classifier, model_dir / "1" / "model.skops")
    return accuracy
