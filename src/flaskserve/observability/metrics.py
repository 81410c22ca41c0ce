"""Prometheus metrics: every metric flaskserve exports, where each is recorded, and the scrape.

Under Granian each worker is its own process: the master points `PROMETHEUS_MULTIPROC_DIR` at a
fresh folder before it forks (`prepare_shared_dir`), every worker keeps its records in its own
memory-mapped table there (`tallies`), and a scrape of any worker reads them all and turns them
into Prometheus families (`collector`). Every metric goes that one way: requests, latency, queue
and compute time, batch size, in-flight and queue gauges, the usage of each API key, load times,
readiness, generation timings and tokens, one locked record update per event. prometheus_client
only writes the text format. Names and meanings are listed in docs/metrics.md.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from flaskserve.core.errors import ModelNotFound
from flaskserve.observability import tallies
from flaskserve.observability.collector import TalliesCollector
from flaskserve.observability.shared_counters import SUFFIX as TALLIES_SUFFIX
from flaskserve.observability.tallies import (
    LATENCY_BUCKETS,
    LOAD_BUCKETS,
    MULTIPROC_ENV,
    TOKEN_BUCKETS,
    request_answered,
    request_ended,
    request_started,
)

if TYPE_CHECKING:
    from flaskserve.core.repository import ModelRepository

#: The transports record a request's start, answer and end through these (`tallies`).
__all__ = [
    "LATENCY_BUCKETS", "LOAD_BUCKETS", "MULTIPROC_ENV", "TOKEN_BUCKETS", "request_answered",
    "request_ended", "request_started",
]

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


def prepare_shared_dir() -> Callable[[], None]:
    """Give the workers about to be forked a clean shared folder; returns the cleanup to run
    when the master exits. A folder the operator chose is emptied of old tables, not removed."""
    chosen = os.environ.get(MULTIPROC_ENV)
    if chosen:
        os.makedirs(chosen, exist_ok=True)
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


class PrometheusObserver:
    """The core's events (`flaskserve.core.observers`) recorded in this worker's tallies, which
    `/metrics` and the statistics extension read; `create_app` installs one as the process
    default."""

    predicted = staticmethod(tallies.predicted)
    queue_waited = staticmethod(tallies.queue_waited)
    queue_changed = staticmethod(tallies.queue_changed)
    loaded = staticmethod(tallies.loaded)
    generated = staticmethod(tallies.generated)


#: Every (model, version) this worker recorded the readiness of.
_known_states: set[tuple[str, str]] = set()
_create_lock = threading.Lock()


def record_states(repository: ModelRepository) -> None:
    """Record `flaskserve_model_ready` from this worker's repository, now; versions it no
    longer serves drop to 0. Called at start and before every scrape (the scraping worker's
    view is the latest, and workers converge on loads and unloads)."""
    current: dict[tuple[str, str], bool] = {}
    for entry in repository.entries():
        if not entry.versions:
            current[(entry.name, "")] = False
        for status in entry.versions.values():
            current[(entry.name, status.version)] = status.model is not None
    with _create_lock:
        for key in _known_states - current.keys():
            current[key] = False
        _known_states.update(current)
    tallies.states(current)


_collector = TalliesCollector()
_registered = False


def exposition() -> tuple[bytes, str]:
    """The text exposition of every worker's metrics (or this process's alone)."""
    global _registered
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        registry.register(_collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    with _create_lock:
        if not _registered:  # one process: its own registry, with the `process_*` metrics
            REGISTRY.register(_collector)
            _registered = True
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
