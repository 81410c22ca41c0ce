"""The threads a served model's runtime really gets, chosen from the server's settings: each ONNX
Runtime session all cores without spinning, PyTorch the worker's share; `runtime_threads` sets
both; a model's own model.toml setting wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from flaskserve.app import runtime_options
from flaskserve.runtimes.threads import available_cores, per_worker
from flaskserve.settings import Settings

#: A python model that reports what the runtimes of its worker process were really given: the
#: PyTorch thread count, or the session options of the ONNX Runtime session serving the model
#: named in the request (found among the live objects of the worker).
PROBE_PY = """\
import gc

import numpy as np
import onnxruntime as ort
import torch


class Probe:
    def predict(self, model):
        wanted = model[0].decode()
        if wanted == "torch":
            return {"threads": np.array([torch.get_num_threads(), -1], dtype=np.int64)}
        for obj in gc.get_objects():
            if isinstance(obj, ort.InferenceSession) and f"/{wanted}/" in obj._model_path:
                options = obj.get_session_options()
                try:
                    spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
                except Exception:
                    spinning = "1"  # not set: ONNX Runtime's default
                threads = [options.intra_op_num_threads, int(spinning)]
                return {"threads": np.array(threads, dtype=np.int64)}
        raise LookupError(wanted)
"""

PROBE_TOML = """\
runtime = "python"
entrypoint = "probe:Probe"
[[inputs]]
name = "model"
datatype = "BYTES"
shape = [1]
[[outputs]]
name = "threads"
datatype = "INT64"
shape = [2]
"""


@pytest.fixture
def probed_repo(tmp_path: Path, onnx_files, torch_files, torch_signature, write_model) -> Path:
    """`affine` (ONNX, no thread settings), `pinned` (ONNX, one spinning thread in its
    model.toml), `tiny` (TorchScript, no thread settings) and the probe."""
    write_model(tmp_path, "affine", "", {"1/model.onnx": onnx_files["affine"]})
    pinned = "intra_op_threads = 1\nintra_op_spinning = true\n"
    write_model(tmp_path, "pinned", pinned, {"1/model.onnx": onnx_files["affine"]})
    write_model(tmp_path, "tiny", torch_signature, {"1/model.pt": torch_files["pt"]})
    write_model(tmp_path, "probe", PROBE_TOML, {"1/probe.py": PROBE_PY.encode()})
    return tmp_path


def probe(url: str, model: str) -> list[int]:
    response = requests.post(
        f"{url}/v2/models/probe/infer",
        json={"inputs": [{"name": "model", "shape": [1], "datatype": "BYTES", "data": [model]}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return list(response.json()["outputs"][0]["data"])


def test_each_worker_gets_its_share_of_the_cores() -> None:
    cores = available_cores()
    assert per_worker(1) == cores
    assert per_worker(cores) == 1
    assert per_worker(cores * 4) == 1  # never zero
    assert per_worker(0) == cores


def test_runtime_options_are_computed_from_the_settings() -> None:
    options = runtime_options(Settings(workers=2, cache_dir="/tmp/c"))
    assert (options.intra_op_threads, options.intra_op_spinning) == (available_cores(), False)
    assert options.threads == per_worker(2)
    assert options.cache_dir == Path("/tmp/c")
    chosen = runtime_options(Settings(workers=2, runtime_threads=3))
    assert (chosen.threads, chosen.intra_op_threads, chosen.intra_op_spinning) == (3, 3, False)
    # --debug serves from one process, whatever --workers says.
    assert runtime_options(Settings(workers=8, debug=True)).threads == available_cores()


def test_served_runtimes_get_all_cores_for_onnx_and_the_share_for_torch(
    probed_repo: Path, start_server
) -> None:
    server = start_server([str(probed_repo), "--workers", "2"])
    assert probe(server.url, "affine") == [available_cores(), 0]
    assert probe(server.url, "pinned") == [1, 1]  # model.toml wins
    assert probe(server.url, "torch")[0] == per_worker(2)


def test_runtime_threads_setting_reaches_every_runtime_without_overriding_model_toml(
    probed_repo: Path, start_server
) -> None:
    server = start_server(
        [str(probed_repo), "--workers", "2"], env={"FLASKSERVE_RUNTIME_THREADS": "3"}
    )
    assert probe(server.url, "affine") == [3, 0]
    assert probe(server.url, "pinned") == [1, 1]
    assert probe(server.url, "torch")[0] == 3
