"""The baselines flaskserve is measured against: what a student writes with Flask.

    gunicorn -w 2 --threads 8 -b 127.0.0.1:PORT plain_app:app      (cwd = bench/)

- `GET /home/<name>` -> "hello,<name>": the HTTP ceiling of Flask + gunicorn on this machine.
- `POST /predict` {"row": [64 numbers]} -> {"label": int, "probabilities": [10 floats]}: the
  digits model called once per request, no batching, Flask's own JSON. It returns what
  flaskserve's digits model returns, so both do the same model work per request.

The model is the digits model file of flaskserve's default repository, named by DIGITS_MODEL
(a `model.skops` path); without it the app serves only the hello route.
"""

import os

import numpy as np
from flask import Flask, jsonify, request

app = Flask(__name__)

_model_path = os.environ.get("DIGITS_MODEL")
if _model_path:
    import skops.io

    clf = skops.io.load(_model_path, trusted=skops.io.get_untrusted_types(file=_model_path))


@app.get("/home/<name>")
def home(name):
    return "hello," + name


@app.post("/predict")
def predict():
    row = np.asarray([request.get_json()["row"]], dtype=np.float32)
    return jsonify(
        label=int(clf.predict(row)[0]), probabilities=clf.predict_proba(row)[0].tolist()
    )
