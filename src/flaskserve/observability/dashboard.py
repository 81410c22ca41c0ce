"""What the dashboard page (`/dashboard`) plots, per model: the cumulative counters every worker
already keeps in `tallies`, summed over the workers, in one small JSON-ready dict.

The counters are cumulative (as Prometheus counters are), so a poll is cheap and the same
whichever worker answers; the page turns two polls into rates: requests/s by status, latency
p50/p99 from the change of the histogram buckets between them (Prometheus's
`histogram_quantile` does the same), rows per predict, and the in-flight and queue gauges as
they are.

Generation metrics (tokens/s, time to first token) come from whoever counts them: a source
added with `add_source` returns, per model, a dict merged into that model's entry (for example
`{"generation": {"tokens": 1234, "ttft": {"count": 10, "ns": ..., "buckets": [...]}}}`, buckets
on `LATENCY_BUCKETS`); the page shows their panels only when some model has such data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from flaskserve.observability import tallies
from flaskserve.observability.shared_counters import Key

#: A source of extra per-model data: every worker's summed tallies -> {model: {field: value}}.
Source = Callable[[dict[Key, list[int]]], dict[str, dict[str, Any]]]

_sources: list[Source] = []
_sources_lock = threading.Lock()


def add_source(source: Source) -> None:
    """Add per-model fields to every snapshot (generation metrics, say); idempotent."""
    with _sources_lock:
        if source not in _sources:
            _sources.append(source)


def _model(models: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    found = models.get(name)
    if found is None:
        found = models[name] = {
            "requests": {},
            "latency": {"count": 0, "ns": 0, "buckets": [0] * (len(tallies.LATENCY_BUCKETS) + 1)},
            "batches": {},
            "rows": 0,
            "predicts": 0,
            "in_flight": 0,
            "queue_depth": 0,
        }
    return found


def snapshot(
    served: Collection[str] = (), allowed: Collection[str] | None = None
) -> dict[str, Any]:
    """Every worker's counters per model (`served` ones listed even before their first request;
    only the models in `allowed`, when given), summed over versions and protocols, with the
    server's time (ms since the epoch) they were read at."""
    totals = tallies.summed()
    models: dict[str, dict[str, Any]] = {}
    for name in served:
        if allowed is None or name in allowed:
            _model(models, name)
    for key, values in totals.items():
        kind, name = key[0], key[1]
        if allowed is not None and name not in allowed:
            continue
        if kind == "r":
            entry = _model(models, name)
            status = key[4]
            entry["requests"][status] = entry["requests"].get(status, 0) + values[tallies.COUNT]
            latency = entry["latency"]
            latency["count"] += values[tallies.COUNT]
            latency["ns"] += values[tallies.NS]
            for index, count in enumerate(values[tallies.BUCKETS :]):
                latency["buckets"][index] += count
        elif kind == "c":
            entry = _model(models, name)
            rows = max(int(key[3]), 1)  # -1: a model without a batch dimension, one row a call
            count = values[tallies.COUNT]
            entry["batches"][str(rows)] = entry["batches"].get(str(rows), 0) + count
            entry["rows"] += rows * count
            entry["predicts"] += count
        elif kind == "i":
            _model(models, name)["in_flight"] += values[tallies.COUNT]
        elif kind == "d":
            _model(models, name)["queue_depth"] += values[tallies.COUNT]
    with _sources_lock:
        sources = list(_sources)
    for source in sources:
        for name, fields in source(totals).items():
            if allowed is None or name in allowed:
                _model(models, name).update(fields)
    return {
        "time": time.time_ns() // 1_000_000,
        "latency_bounds": list(tallies.LATENCY_BUCKETS),
        "models": dict(sorted(models.items())),
    }
