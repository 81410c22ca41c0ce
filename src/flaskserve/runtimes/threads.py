"""How many CPU threads a model's runtime uses in one process, when its model.toml does not say.

ONNX Runtime and PyTorch start one thread per core in every process. Under Granian, with one
worker process per core, that is cores x workers threads fighting over the cores: on 2 cores
with 2 workers, MiniLM at c=32 served 257 sentences/s with ONNX Runtime's default threads and
398 with one thread per worker (docs/benchmarks.md). So the server divides the cores among its
workers and tells the runtimes through `FLASKSERVE_RUNTIME_THREADS`, set before the workers
fork. Outside the server (a notebook, a test, `--debug`'s single process) the libraries keep
their own defaults. A model's `intra_op_threads` (ONNX) or `threads` (PyTorch) always wins.
"""

from __future__ import annotations

import os

RUNTIME_THREADS_ENV = "FLASKSERVE_RUNTIME_THREADS"


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def per_worker(workers: int) -> int:
    """Each of `workers` processes' share of the cores, at least one."""
    return max(1, available_cores() // max(1, workers))


def default_threads() -> int:
    """The threads the server chose for each runtime in this process; 0: the library's default."""
    raw = os.environ.get(RUNTIME_THREADS_ENV, "")
    return int(raw) if raw.isdigit() else 0
