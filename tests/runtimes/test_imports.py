"""A worker imports what its models need and nothing more: no torch for scikit-learn or ONNX.

torch alone is about 770 modules, 3 to 4 s of CPU and 170 MiB per worker (docs/benchmarks.md,
"Memory per worker"); skops used to bring it in through scikit-learn's array-API adapters
(runtimes/skops_import.py). Each check runs in a process of its own, as imports are per process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from threadpoolctl import threadpool_limits

from flaskserve.models import defaults, minilm

pytestmark = pytest.mark.slow  # fresh interpreters importing scikit-learn (and torch, once)

#: Libraries the default models do not need once MiniLM's ONNX export is in the cache.
UNNEEDED = ("torch", "sentence_transformers", "transformers", "onnx", "skl2onnx")

needs_nlp = pytest.mark.skipif(not minilm.available(), reason="the nlp extra is not installed")


def run_python(code: str, cache: Path) -> dict:
    """Run `code` in a fresh interpreter; what it prints last is JSON."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        # One BLAS thread, as conftest.py trains digits: more only spin on a busy machine.
        env={**os.environ, "FLASKSERVE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_nlp
def test_loading_and_running_the_default_models_imports_no_torch(
    session_cache: Path, minilm_export: Path
) -> None:
    """The digits skops file and MiniLM's cached ONNX export, through the runtime loader."""
    with threadpool_limits(1):
        root = defaults.default_repository(session_cache)
    code = f"""
import json, sys
from pathlib import Path
import numpy as np
from flaskserve.core.config import read_model_config
from flaskserve.runtimes.context import RuntimeOptions
from flaskserve.runtimes.registry import load_model

root, options = Path({str(root)!r}), RuntimeOptions(Path({str(session_cache)!r}))
feeds = {{
    "digits": {{"input": np.zeros((1, 64), np.float32)}},
    "minilm": {{"text": np.array([b"no torch here"], dtype=object)}},
}}
platforms = {{}}
for name, feed in feeds.items():
    model = load_model(read_model_config(root / name), "1", root / name / "1", options)
    model.predict(feed)
    platforms[name] = model.platform
loaded = sorted(m for m in {UNNEEDED!r} if m in sys.modules)
print(json.dumps({{"platforms": platforms, "loaded": loaded}}))
"""
    report = run_python(code, session_cache)
    assert report["platforms"] == {
        "digits": "sklearn_LogisticRegression",
        "minilm": "sentence_transformers_onnx",
    }
    assert report["loaded"] == []


def test_building_the_digits_model_imports_no_torch(tmp_path: Path) -> None:
    """What the server's master process does on a cold cache, before it forks the workers."""
    code = f"""
import json, sys
from pathlib import Path
from flaskserve.models import digits
digits.build(Path({str(tmp_path / "digits")!r}))
print(json.dumps(sorted(m for m in {UNNEEDED!r} if m in sys.modules)))
"""
    assert run_python(code, tmp_path / "cache") == []


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_skops_trusts_the_same_types_as_when_imported_with_torch(tmp_path: Path) -> None:
    """Leaving the adapters out must not change what skops trusts: the security property."""
    lists = (
        "SKLEARN_ESTIMATOR_TYPE_NAMES",
        "SKLEARN_INTERNAL_TYPE_NAMES",
        "SCIPY_UFUNC_TYPE_NAMES",
        "NUMPY_UFUNC_TYPE_NAMES",
        "NUMPY_DTYPE_TYPE_NAMES",
        "NUMPY_RANDOM_BIT_GENERATOR_TYPE_NAMES",
        "PRIMITIVE_TYPE_NAMES",
        "CONTAINER_TYPE_NAMES",
    )
    report = (
        "import json, sys\n"
        "from skops.io import _trusted_types as t\n"
        f"names = {{name: sorted(getattr(t, name)) for name in {lists!r} if hasattr(t, name)}}\n"
        'print(json.dumps({"torch": "torch" in sys.modules, "names": names}))\n'
    )
    plain = run_python("import skops.io\n" + report, tmp_path)
    lean = run_python(
        "from flaskserve.runtimes.skops_import import import_skops_io\nimport_skops_io()\n"
        + report,
        tmp_path,
    )
    assert plain["torch"] and not lean["torch"], "the plain import is the one with torch"
    assert lean["names"] == plain["names"]
    assert len(lean["names"]["SKLEARN_ESTIMATOR_TYPE_NAMES"]) > 100


@needs_nlp
def test_workers_serving_the_default_models_map_no_torch_library(
    start_server, minilm_export: Path, session_cache: Path, tmp_path: Path
) -> None:
    """A real server's workers, after a request to each default model but `scribe` (the text
    generator, which runs on torch by design): none has mapped a file of torch's package (its
    shared libraries are what most of its memory is)."""
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.origin is not None
    torch_dir = str(Path(spec.origin).parent)
    with threadpool_limits(1):
        defaults_root = defaults.default_repository(session_cache)
    repo = tmp_path / "repo"
    for name in ("digits", "minilm"):
        shutil.copytree(defaults_root / name, repo / name)
    server = start_server(
        [str(repo), "--workers", "2"], ready_path="/v2/health/ready", timeout=180
    )
    server.wait_for_log("model minilm version 1 is ready", count=2, timeout=180)
    for model, tensor in [
        ("digits", {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}),
        ("minilm", {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}),
    ]:
        for _ in range(4):  # either worker may answer: a few requests reach both, most likely
            answer = requests.post(
                f"{server.url}/v2/models/{model}/infer", json={"inputs": [tensor]}, timeout=30
            )
            assert answer.status_code == 200, answer.text
    workers = server.worker_pids()
    assert len(workers) == 2
    for pid in workers:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert torch_dir not in maps, f"worker {pid} mapped files from {torch_dir}"
