"""The server divides the cores among its workers' runtimes, unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from flaskserve.runtimes.threads import available_cores, per_worker

THREADS_TOML = """\
runtime = "python"
entrypoint = "threads:Threads"
[[inputs]]
name = "x"
datatype = "INT64"
shape = [-1]
[[outputs]]
name = "threads"
datatype = "INT64"
shape = [-1]
"""

THREADS_PY = """\
import numpy as np

from flaskserve.runtimes.threads import default_threads


class Threads:
    def predict(self, x):
        return {"threads": np.full(x.shape[0], default_threads(), dtype=np.int64)}
"""


def test_each_worker_gets_its_share_of_the_cores() -> None:
    cores = available_cores()
    assert per_worker(1) == cores
    assert per_worker(cores) == 1
    assert per_worker(cores * 4) == 1  # never zero
    assert per_worker(0) == cores


@pytest.mark.parametrize(
    ("env", "expected"), [({}, None), ({"FLASKSERVE_RUNTIME_THREADS": "3"}, 3)]
)
def test_served_models_see_the_runtime_threads(tmp_path: Path, start_server, env, expected) -> None:
    (tmp_path / "threads" / "1").mkdir(parents=True)
    (tmp_path / "threads" / "model.toml").write_text(THREADS_TOML)
    (tmp_path / "threads" / "1" / "threads.py").write_text(THREADS_PY)
    server = start_server([str(tmp_path), "--workers", "2"], env=env)
    response = requests.post(
        f"{server.url}/v2/models/threads/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [0]}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [expected or per_worker(2)]
