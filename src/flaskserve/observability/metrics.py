"""Prometheus metrics: every metric flaskserve exports, and the small functions that record them.

Under Granian each worker is its own process, so the metrics use prometheus_client's
multiprocess mode: the master points `PROMETHEUS_MULTIPROC_DIR` at a fresh folder before it forks
(`prepare_multiprocess_dir`), every worker writes its values to memory-mapped files there, and a
scrape of any worker sums them all. prometheus_client decides at import time whether it runs in
that mode, so nothing here imports it until the first metric is recorded, which happens in a
worker, after the fork. Names and meanings are listed in docs/metrics.md.
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
from flaskserve.observability import statistics
from flaskserve.observability.shared_counters import SUFFIX as STATISTICS_SUFFIX

if TYPE_CHECKING:
    from flaskserve.core.repository import ModelRepository

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds; from half a millisecond (a tiny model over loopback) to a minute (a slow one).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)
#: Rows per `predict` call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Seconds a model version took to load.
LOAD_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

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
        for stale in glob.glob(os.path.join(chosen, f"*{STATISTICS_SUFFIX}")):
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
        if pid.isdigit() and not _alive(int(pid)):
            worker_exited(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process took the number
        return True
    return True


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

        self.requests = _Family(Counter(
            "flaskserve_requests",
            "Inference requests answered, by model, served version, protocol and HTTP status.",
            ["model", "version", "protocol", "status"],
        ))
        self.latency = _Family(Histogram(
            "flaskserve_request_duration_seconds",
            "Time from routing an inference request to its response being built.",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
        ))
        self.queue_time = _Family(Histogram(
            "flaskserve_queue_duration_seconds",
            "Time a request waited for the dynamic batcher before its batch started.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
        ))
        self.compute_time = _Family(Histogram(
            "flaskserve_compute_duration_seconds",
            "Time of one model predict call (one batch), outputs conformed included.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
        ))
        self.batch_size = _Family(Histogram(
            "flaskserve_batch_size",
            "Rows (first dimension) given to one model predict call.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
        ))
        self.in_flight = _Family(Gauge(
            "flaskserve_requests_in_flight",
            "Inference requests being handled now, summed over live workers.",
            ["model"],
            multiprocess_mode="livesum",
        ))
        self.queue_depth = _Family(Gauge(
            "flaskserve_queue_depth",
            "Requests queued in the dynamic batcher now, summed over live workers.",
            ["model", "version"],
            multiprocess_mode="livesum",
        ))
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


_metrics: Metrics | None = None
_create_lock = threading.Lock()


def get() -> Metrics:
    global _metrics
    if _metrics is None:
        with _create_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


# -- recording (each call is a few microseconds: the request path calls them) ------------------


def request_started(model: str) -> None:
    (_metrics or get()).in_flight(model).inc()


def request_ended(model: str) -> None:
    (_metrics or get()).in_flight(model).dec()


def request_answered(model: str, version: str, protocol: str, status: str, seconds: float) -> None:
    m = _metrics or get()
    m.requests(model, version, protocol, status).inc()
    m.latency(model, version, protocol).observe(seconds)
    statistics.answered(model, version, status, seconds)


def queue_changed(model: str, version: str, delta: int) -> None:
    (_metrics or get()).queue_depth(model, version).inc(delta)


def queue_waited(model: str, version: str, seconds: float) -> None:
    (_metrics or get()).queue_time(model, version).observe(seconds)
    statistics.queued(model, version, seconds)


def predicted(model: str, version: str, rows: int, seconds: float) -> None:
    m = _metrics or get()
    m.compute_time(model, version).observe(seconds)
    if rows >= 0:
        m.batch_size(model, version).observe(rows)
    statistics.executed(model, version, rows, seconds)


def model_loaded(model: str, version: str, seconds: float) -> None:
    (_metrics or get()).load_time(model, version).observe(seconds)


class PrometheusObserver:
    """The core's events (`flaskserve.core.observers`) recorded as the metrics above;
    `create_app` installs one as the process default."""

    def predicted(self, model: str, version: str, rows: int, seconds: float) -> None:
        predicted(model, version, rows, seconds)

    def queue_waited(self, model: str, version: str, seconds: float) -> None:
        queue_waited(model, version, seconds)

    def queue_changed(self, model: str, version: str, delta: int) -> None:
        queue_changed(model, version, delta)

    def loaded(self, model: str, version: str, seconds: float) -> None:
        model_loaded(model, version, seconds)


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


def exposition() -> tuple[bytes, str]:
    """The text exposition of every worker's metrics (or this process's alone)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    get()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        sweep_dead_workers()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
