"""How many CPU threads a model's runtime uses in a server process, when its model.toml does not
say: a lone request should get the cores it can use, and a busy server should batch.

ONNX Runtime and PyTorch start one thread per core in every process, and ONNX Runtime's idle
threads spin waiting for the next parallel section. Under the server, with one worker process
per core, the spinning is what hurts: each worker's spinning threads burn the core the other
worker needs. With spinning off, an ONNX Runtime session may have every core: a lone request
runs on all of them, and under load the threads of a worker waiting for a core sleep instead
of spinning, while the batcher fills larger batches (docs/benchmarks.md, "Cores per worker").
PyTorch's OpenMP threads spin too and cannot be told otherwise once it has started
(`OMP_WAIT_POLICY`), so PyTorch keeps the worker's share of the cores.

The app hands these counts to the runtimes in `RuntimeOptions` (app.py `runtime_options`); a
model's `intra_op_threads`/`intra_op_spinning` (ONNX) or `threads` (PyTorch) always win.
"""

from __future__ import annotations

import os
from dataclasses import replace

from flaskserve.runtimes.context import RuntimeOptions


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def per_worker(workers: int) -> int:
    """Each of `workers` processes' share of the cores, at least one."""
    return max(1, available_cores() // max(1, workers))


def served(options: RuntimeOptions, configured: int, workers: int) -> RuntimeOptions:
    """`options` with the threads of one of `workers` server processes: `configured`
    (`Settings.runtime_threads`) for every runtime when set; else all cores for each ONNX
    Runtime session and the worker's share for PyTorch. ONNX Runtime never spins."""
    if configured > 0:
        return replace(
            options, threads=configured, intra_op_threads=configured, intra_op_spinning=False
        )
    return replace(
        options,
        threads=per_worker(workers),
        intra_op_threads=available_cores(),
        intra_op_spinning=False,
    )
