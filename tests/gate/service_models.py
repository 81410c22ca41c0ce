"""Python models for test repositories: one that sleeps, one that tells its version."""

from __future__ import annotations

from pathlib import Path

SLOW_TOML = """\
runtime = "python"
entrypoint = "slow:Slow"
[[inputs]]
name = "seconds"
datatype = "FP32"
shape = [-1]
[[outputs]]
name = "seconds"
datatype = "FP32"
shape = [-1]
"""

SLOW_PY = """\
import time
from pathlib import Path

STARTED = Path(__file__).parent / "started"


class Slow:
    def predict(self, seconds):
        with open(STARTED, "a") as log:  # one line per predict begun, for tests to wait on
            log.write("started\\n")
        time.sleep(float(seconds.max()) if seconds.size else 0.0)
        return {"seconds": seconds}
"""

VERSIONED_TOML = """\
runtime = "python"
entrypoint = "versioned:Versioned"
[[inputs]]
name = "x"
datatype = "INT64"
shape = [-1]
[[outputs]]
name = "version"
datatype = "INT64"
shape = [-1]
[batching]
max_batch_size = 16
max_delay_ms = 2
"""

VERSIONED_PY = """\
import time

import numpy as np


class Versioned:
    def predict(self, x):
        time.sleep(0.002)
        return {{"version": np.full(x.shape[0], {version}, dtype=np.int64)}}
"""


def write_slow(root: Path) -> None:
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "model.toml").write_text(SLOW_TOML)
    (root / "slow" / "1" / "slow.py").write_text(SLOW_PY)


def slow_predicts_started(root: Path) -> int:
    started = root / "slow" / "1" / "started"
    return len(started.read_text().splitlines()) if started.exists() else 0


def write_versioned(root: Path, version: int) -> None:
    folder = root / "versioned" / str(version)
    folder.mkdir(parents=True)
    (root / "versioned" / "model.toml").write_text(VERSIONED_TOML)
    (folder / "versioned.py").write_text(VERSIONED_PY.format(version=version))


def slow_body(seconds: float, rows: int = 1) -> dict:
    return {
        "inputs": [
            {"name": "seconds", "shape": [rows], "datatype": "FP32", "data": [seconds] * rows}
        ]
    }


def versioned_body(rows: int = 1) -> dict:
    return {"inputs": [{"name": "x", "shape": [rows], "datatype": "INT64", "data": [1] * rows}]}
