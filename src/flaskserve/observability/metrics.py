"""Prometheus metrics: every metric flaskserve exports, where each is recorded, and the scrape.

Under Granian each worker is its own process: the master points `PROMETHEUS_MULTIPROC_DIR` at a
fresh folder before it forks (`prepare_multiprocess_dir`), every worker writes its values to
memory-mapped files there, and a scrape of any worker sums them all. The per-request metrics
(requests, latency, queue and compute time, batch size, in-flight and queue gauges, and the usage
of each API key) are counted in `tallies`, one record update per event, and turned into Prometheus
families when scraped (`collector`); the rare ones (load time, readiness, generation timings and
tokens) use prometheus_client's own multiprocess mode. prometheus_client decides at import time
whether it runs in that mode, so nothing here imports it until the first metric is recorded, which
happens in a worker, after the fork. Names and meanings are listed in docs/metrics.md.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flaskserve.core.errors import ModelNotFound
from flaskserve.observability import tallies
from flaskserve.observability.collector import TalliesCollector
from flaskserve.observability.shared_counters import SUFFIX as TALLIES_SUFFIX
from flaskserve.observability.tallies import (
    LATENCY_BUCKETS,
    MULTIPROC_ENV,
    request_answered,
    request_ended,
    request_started,
)

if TYPE_CHECKING:
    from flaskserve.core.repository import ModelRepository

#: The transports record a request's start, answer and end through these (`tallies`).
__all__ = [
    "LATENCY_BUCKETS", "MULTIPROC_ENV", "request_answered", "request_ended", "request_started",
]

#: Seconds a model version took to load.
LOAD_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Time to first token and per output token: milliseconds (a GPU) to seconds (a busy CPU).
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The `model` label of requests naming a model the repository does not know, so a client sending
#: random names cannot create unbounded series.
UNKNOWN_MODEL = "(unknown)"
#: The `version` label of requests naming a version of a known model that the repository does
#: not have, for the same reason.
UNKNOWN_VERSION = "(unknown)"


def model_labels(
    repository: ModelRepository, name: str | None, version: str | None
) -> tuple[str, str]:
    """(model, version) labels of a request: the served version unless the request names one.
    Labels come only from the repository: a model or version it does not know is `(unknown)`,
    so a client making names up cannot create series (each costs memory in every worker)."""
    if not name:
        return UNKNOWN_MODEL, ""
    try:
        entry = repository.entry(name)
    except ModelNotFound:
        return UNKNOWN_MODEL, ""
    if version is None:
        return name, entry.default.version if entry.default is not None else ""
    return name, version if version in entry.versions else UNKNOWN_VERSION


def shared_memory_dir() -> str | None:
    """/dev/shm where there is one: every request writes its metrics to these files, and memory
    beats a disk (a disk or overlay file system can stall a write)."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def prepare_multiprocess_dir() -> Callable[[], None]:
    """Give the workers about to be forked a clean shared folder; returns the cleanup to run
    when the master exits. A folder the operator chose is emptied of old files, not removed."""
    chosen = os.environ.get(MULTIPROC_ENV)
    if chosen:
        os.makedirs(chosen, exist_ok=True)
        for stale in glob.glob(os.path.join(chosen, "*.db")):
            os.remove(stale)
        for stale in glob.glob(os.path.join(chosen, f"*{TALLIES_SUFFIX}")):
            os.remove(stale)
        return lambda: None
    path = tempfile.mkdtemp(prefix="flaskserve-metrics-", dir=shared_memory_dir())
    os.environ[MULTIPROC_ENV] = path
    master = os.getpid()

    def cleanup() -> None:
        if os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)

    return cleanup


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight, queue depth) so they stop adding up."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def sweep_dead_workers() -> None:
    """`worker_exited` for every process that left live gauges in the shared folder and is
    gone: a worker killed by a signal runs no exit code of its own, and the engine tells the
    app of no dead worker, so the next worker to boot and every scrape sweep instead."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return
    pids = {
        path.rsplit("_", 1)[1][: -len(".db")]
        for path in glob.glob(os.path.join(folder, "gauge_live*_*.db"))
    }
    for pid in pids:
        if pid.isdigit() and not tallies.alive(int(pid)):
            worker_exited(int(pid))


class _Family:
    """One labelled metric with its children cached by label values (`labels()` takes a lock
    and validates on every call; a dict lookup is what the request path can afford)."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """The metric objects of this process; built once, on first use, by `get`."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.load_time = _Family(Histogram(
            "flaskserve_model_load_duration_seconds",
            "Time to load one model version, once per load in every worker.",
            ["model", "version"],
            buckets=LOAD_BUCKETS,
        ))
        self.ready = _Family(Gauge(
            "flaskserve_model_ready",
            "1 when the model version is READY, 0 when it is not (failed to load, unloaded).",
            ["model", "version"],
            multiprocess_mode="mostrecent",
        ))
        self.known_states: set[tuple[str, str]] = set()
        self.first_token = _Family(Histogram(
            "flaskserve_generation_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first token.",
            ["model", "version"],
            buckets=TOKEN_BUCKETS,
        ))
        self.per_token = _Family(Histogram(
            "flaskserve_generation_time_per_output_token_seconds",
            "Mean time between output tokens after the first, one observation per generation.",
            ["model", "version"],
            buckets=TOKEN_BUCKETS,
        ))
        self.tokens = _Family(Counter(
            "flaskserve_generation_tokens",
            "Tokens of generative models by kind (prompt, completion); rate() gives tokens/s.",
            ["model", "version", "kind"],
        ))


_metrics: Metrics | None = None
_create_lock = threading.Lock()


def get() -> Metrics:
    global _metrics
    if _metrics is None:
        with _create_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


# -- the core's events: into this worker's tallies, or prometheus_client for the rare ones ---


class PrometheusObserver:
    """The core's events (`flaskserve.core.observers`) recorded as the metrics above;
    `create_app` installs one as the process default."""

    def predicted(self, model: str, version: str, rows: int, seconds: float) -> None:
        tallies.predicted(model, version, rows, seconds)

    def queue_waited(self, model: str, version: str, seconds: float) -> None:
        tallies.queue_waited(model, version, seconds)

    def queue_changed(self, model: str, version: str, delta: int) -> None:
        tallies.queue_changed(model, version, delta)

    def loaded(self, model: str, version: str, seconds: float) -> None:
        (_metrics or get()).load_time(model, version).observe(seconds)

    def generated(
        self,
        model: str,
        version: str,
        first_token: float | None,
        per_token: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        m = _metrics or get()
        if first_token is not None:
            m.first_token(model, version).observe(first_token)
        if per_token is not None:
            m.per_token(model, version).observe(per_token)
        m.tokens(model, version, "prompt").inc(prompt_tokens)
        m.tokens(model, version, "completion").inc(completion_tokens)


def record_states(repository: ModelRepository) -> None:
    """Set `flaskserve_model_ready` from this worker's repository; versions it no longer serves
    drop to 0. Called at start and before every scrape (workers converge on load/unload)."""
    m = _metrics or get()
    current: dict[tuple[str, str], int] = {}
    for entry in repository.entries():
        if not entry.versions:
            current[(entry.name, "")] = 0
        for status in entry.versions.values():
            current[(entry.name, status.version)] = int(status.model is not None)
    for key in m.known_states - current.keys():
        m.ready(*key).set(0)
    for key, value in current.items():
        m.ready(*key).set(value)
    m.known_states |= current.keys()


_collector = TalliesCollector()
_registered = False


def exposition() -> tuple[bytes, str]:
    """The text exposition of every worker's metrics (or this process's alone)."""
    global _registered
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    get()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        sweep_dead_workers()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    with _create_lock:
        if not _registered:
            REGISTRY.register(_collector)
            _registered = True
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
