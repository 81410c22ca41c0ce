"""Prometheus metrics: every metric flaskserve exports, and the small functions that record them.

Under Granian each worker is its own process: the master points `PROMETHEUS_MULTIPROC_DIR` at a
fresh folder before it forks (`prepare_multiprocess_dir`), every worker writes its values to
memory-mapped files there, and a scrape of any worker sums them all. The per-request metrics
(requests, latency, queue and compute time, batch size, in-flight and queue gauges) are counted
in `tallies`, one record update per event, and turned into Prometheus families when scraped
(`TalliesCollector`); the rare ones (load time, readiness) use prometheus_client's own
multiprocess mode. prometheus_client decides at import time whether it runs in that mode, so
nothing here imports it until the first metric is recorded, which happens in a worker, after the
fork. Names and meanings are listed in docs/metrics.md.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flaskserve.core.errors import ModelNotFound
from flaskserve.observability import tallies
from flaskserve.observability.shared_counters import SUFFIX as TALLIES_SUFFIX
from flaskserve.observability.tallies import LATENCY_BUCKETS, MULTIPROC_ENV

if TYPE_CHECKING:
    from flaskserve.core.repository import ModelRepository

__all__ = ["LATENCY_BUCKETS", "MULTIPROC_ENV"]

#: Rows per `predict` call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
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


# -- recording (each call is a few microseconds: the request path calls them) ------------------


def request_started(model: str) -> None:
    tallies.in_flight(model, 1)


def request_ended(model: str) -> None:
    tallies.in_flight(model, -1)


def request_answered(model: str, version: str, protocol: str, status: str, seconds: float) -> None:
    tallies.answered(model, version, protocol, status, seconds)


def queue_changed(model: str, version: str, delta: int) -> None:
    tallies.queue_depth(model, version, delta)


def queue_waited(model: str, version: str, seconds: float) -> None:
    tallies.queued(model, version, seconds)


def predicted(model: str, version: str, rows: int, seconds: float) -> None:
    tallies.executed(model, version, rows, seconds)


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


_HELP = {
    "requests": "Inference requests answered, by model, served version, protocol and HTTP status.",
    "latency": "Time from routing an inference request to its response being built.",
    "queue": "Time a request waited for the dynamic batcher before its batch started.",
    "compute": "Time of one model predict call (one batch), outputs conformed included.",
    "batch": "Rows (first dimension) given to one model predict call.",
    "in_flight": "Inference requests being handled now, summed over live workers.",
    "depth": "Requests queued in the dynamic batcher now, summed over live workers.",
}


class TalliesCollector:
    """The per-request metrics of every worker (`tallies`), as Prometheus families."""

    def collect(self) -> Any:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        totals = tallies.summed()
        requests = CounterMetricFamily(
            "flaskserve_requests",
            _HELP["requests"],
            labels=["model", "version", "protocol", "status"],
        )
        latency: dict[tuple[str, ...], list[int]] = {}
        queue: dict[tuple[str, ...], list[int]] = {}
        compute: dict[tuple[str, ...], list[int]] = {}
        batch: dict[tuple[str, ...], list[int]] = {}
        in_flight = GaugeMetricFamily(
            "flaskserve_requests_in_flight", _HELP["in_flight"], labels=["model"]
        )
        depth = GaugeMetricFamily(
            "flaskserve_queue_depth", _HELP["depth"], labels=["model", "version"]
        )
        for key, values in sorted(totals.items()):
            kind, labels = key[0], list(key[1:])
            if kind == "r":
                requests.add_metric(labels, values[tallies.COUNT])
                _merge(latency, tuple(labels[:3]), values)
            elif kind == "q":
                _merge(queue, tuple(labels), values)
            elif kind == "c":
                _merge(compute, tuple(labels[:2]), values)
                rows = int(labels[2])
                if rows >= 0:
                    counts = batch.setdefault(tuple(labels[:2]), [0] * (len(BATCH_BUCKETS) + 2))
                    counts[0] += rows * values[tallies.COUNT]
                    counts[1 + bisect_left(BATCH_BUCKETS, rows)] += values[tallies.COUNT]
            elif kind == "i":
                in_flight.add_metric(labels, values[tallies.COUNT])
            elif kind == "d":
                depth.add_metric(labels, values[tallies.COUNT])
        yield requests
        yield _histogram(HistogramMetricFamily, "flaskserve_request_duration_seconds",
                         _HELP["latency"], ["model", "version", "protocol"], latency)
        yield _histogram(HistogramMetricFamily, "flaskserve_queue_duration_seconds",
                         _HELP["queue"], ["model", "version"], queue)
        yield _histogram(HistogramMetricFamily, "flaskserve_compute_duration_seconds",
                         _HELP["compute"], ["model", "version"], compute)
        sizes = HistogramMetricFamily(
            "flaskserve_batch_size", _HELP["batch"], labels=["model", "version"]
        )
        for series, counts in batch.items():
            sizes.add_metric(
                list(series), _cumulative(BATCH_BUCKETS, counts[1:]), sum_value=counts[0]
            )
        yield sizes
        yield in_flight
        yield depth


def _merge(into: dict[tuple[str, ...], list[int]], labels: tuple[str, ...], values: Any) -> None:
    """Add a record's nanoseconds and bucket counts to the series of `labels`."""
    total = into.get(labels)
    if total is None:
        into[labels] = [values[tallies.NS], *values[tallies.BUCKETS :]]
        return
    total[0] += values[tallies.NS]
    for index, count in enumerate(values[tallies.BUCKETS :], start=1):
        total[index] += count


def _histogram(
    family: Any, name: str, help_text: str, label_names: list[str],
    series: dict[tuple[str, ...], list[int]],
) -> Any:
    metric = family(name, help_text, labels=label_names)
    for labels, values in series.items():
        metric.add_metric(
            list(labels), _cumulative(LATENCY_BUCKETS, values[1:]), sum_value=values[0] / 1e9
        )
    return metric


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (`le`, observations at or under it) from per-bucket counts."""
    from prometheus_client.utils import floatToGoString

    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append((floatToGoString(bound), running))
    return out


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
