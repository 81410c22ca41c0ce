"""Python models for test repositories: one that sleeps, one that tells its version."""

from __future__ import annotations

from pathlib import Path

from python_models import calls_started, python_toml, write_python_model

SLOW_TOML = python_toml("slow:Slow", {"seconds": ("FP32", [-1])}, {"seconds": ("FP32", [-1])})
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

VERSIONED_TOML = python_toml(
    "versioned:Versioned",
    {"x": ("INT64", [-1])},
    {"version": ("INT64", [-1])},
    extra="[batching]\nmax_batch_size = 16\nmax_delay_ms = 2",
)
VERSIONED_PY = """\
import time

import numpy as np


class Versioned:
    def predict(self, x):
        time.sleep(0.002)
        return {{"version": np.full(x.shape[0], {version}, dtype=np.int64)}}
"""


def write_slow(root: Path) -> None:
    write_python_model(root, "slow", SLOW_TOML, SLOW_PY)


def slow_predicts_started(root: Path) -> int:
    return calls_started(root / "slow" / "1")


def write_versioned(root: Path, version: int) -> None:
    source = VERSIONED_PY.format(version=version)
    write_python_model(root, "versioned", VERSIONED_TOML, source, version=version)


def slow_body(seconds: float, rows: int = 1) -> dict:
    return {
        "inputs": [
            {"name": "seconds", "shape": [rows], "datatype": "FP32", "data": [seconds] * rows}
        ]
    }


def versioned_body(rows: int = 1) -> dict:
    return {"inputs": [{"name": "x", "shape": [rows], "datatype": "INT64", "data": [1] * rows}]}
