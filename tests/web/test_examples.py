"""Widgets chosen from signatures, and client snippets that run as they are copied."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import requests

from flaskserve.core.model import TensorSpec
from flaskserve.gate.keys import add_key
from flaskserve.web.examples import example_instances, example_request, widget_for

DIGITS_IN = [TensorSpec("input", "FP32", [-1, 64])]
DIGITS_OUT = [TensorSpec("label", "INT64", [-1]), TensorSpec("probabilities", "FP32", [-1, 10])]


@pytest.mark.parametrize(
    ("name", "inputs", "outputs", "kind", "embedding"),
    [
        ("digits", DIGITS_IN, DIGITS_OUT, "digits", None),
        ("my-digits", DIGITS_IN, DIGITS_OUT, "digits", None),
        ("pixels", DIGITS_IN, [TensorSpec("y", "FP32", [-1, 10])], "json", None),
        ("minilm", [TensorSpec("text", "BYTES", [-1])],
         [TensorSpec("embedding", "FP32", [-1, 384])], "text", "embedding"),
        ("sentiment", [TensorSpec("text", "BYTES", [-1])],
         [TensorSpec("label", "BYTES", [-1])], "text", None),
        ("iris", [TensorSpec("x", "FP64", [-1, 4])], [TensorSpec("y", "INT64", [-1])], "json",
         None),
    ],
)
def test_widget_follows_the_signature(name, inputs, outputs, kind, embedding) -> None:
    widget = widget_for(name, inputs, outputs)
    assert widget.kind == kind
    assert widget.embedding_output == embedding
    if kind == "digits":
        assert (widget.label_output, widget.probabilities_output) == ("label", "probabilities")


def test_examples_fill_variable_dimensions_with_valid_values() -> None:
    request = example_request(
        [TensorSpec("t", "BYTES", [-1]), TensorSpec("m", "INT8", [-1, 2, 3]),
         TensorSpec("b", "BOOL", [4])]
    )
    tensors = {t["name"]: t for t in request["inputs"]}
    assert tensors["t"]["shape"] == [2] and all(isinstance(s, str) for s in tensors["t"]["data"])
    assert tensors["m"]["shape"] == [1, 2, 3] and len(tensors["m"]["data"]) == 6
    assert tensors["b"]["data"] == [True, False, True, False]
    assert example_instances([TensorSpec("x", "FP32", [-1, 2, 2])]) == {
        "instances": [[[0.0, 0.5], [1.0, 1.5]]]
    }


def run_snippet(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def snippet(page: str, key: str) -> str:
    found = re.search(f'<code id="code-{key}">(.*?)</code>', page, re.S)
    assert found, f"no {key} snippet on the page"
    return html.unescape(found.group(1))


def test_snippets_on_the_model_pages_run_against_the_server(start_server,
                                                            playground_repo) -> None:
    server = start_server([str(playground_repo), "--workers", "1"])
    outputs = {"digits": ["label", "probabilities"], "letters": ["vector"],
               "tabular": ["score", "positive"]}
    for model, names in outputs.items():
        page = requests.get(f"{server.url}/models/{model}", timeout=10).text
        for kind in ("requests", "tritonclient"):
            printed = run_snippet(snippet(page, kind)).splitlines()
            assert [line.split(" ", 1)[0] for line in printed if line[:1].isalpha()] == names
            if model == "digits":
                assert printed[0].endswith("[7]")  # the example is a handwritten 7
        if shutil.which("curl"):
            done = subprocess.run(["bash", "-c", snippet(page, "curl")], capture_output=True,
                                  text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["model_name"] == model


def test_snippets_under_auth_read_the_key_from_the_environment(start_server, playground_repo,
                                                               tmp_path) -> None:
    keys = tmp_path / "keys.toml"
    key = add_key(keys, "alice")
    server = start_server([str(playground_repo), "--workers", "1", "--auth", str(keys)])
    page = requests.get(f"{server.url}/models/digits", timeout=10).text
    assert key not in page
    env = {**os.environ, "FLASKSERVE_API_KEY": key}
    for kind in ("requests", "tritonclient"):
        code = snippet(page, kind)
        assert "FLASKSERVE_API_KEY" in code
        assert run_snippet(code, env).splitlines()[0].endswith("[7]")
    curl = snippet(page, "curl")
    assert '"Authorization: Bearer $FLASKSERVE_API_KEY"' in curl
    done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30,
                          env=env)
    assert json.loads(done.stdout)["model_name"] == "digits", done.stdout
