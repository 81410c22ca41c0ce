"""Triton's statistics extension: per model version counts and times, summed over every worker.

Fed by the metric hooks every inference already passes through, once each (`metrics`
calls `answered`, `queued` and `executed`), into a `CounterTable` per worker kept beside the
Prometheus files (`PROMETHEUS_MULTIPROC_DIR`), so whichever worker answers a statistics request
reports what all of them served. What each number means, and where flaskserve differs from
Triton, is in docs/metrics.md ("Statistics extension").
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from flaskserve.core.errors import InvalidInput, ModelNotFound
from flaskserve.observability.shared_counters import CounterTable, Key, Values, read_directory

if TYPE_CHECKING:
    from flaskserve.core.repository import ModelEntry, ModelRepository

#: The values of a model version's record ("m", model, version): (count, ns) pairs, then the
#: time of the latest request.
SUCCESS, FAIL, QUEUE, LAST_INFERENCE = 0, 2, 4, 6
WIDTH = 7
#: A batch size's record ("b", model, version, size) holds (predicts, their ns) at 0; the
#: model's execution count, compute time and inference count are sums over its batch sizes.
BATCH = 0
#: Statuses of requests the service layer refused before the model was asked (no key, not
#: allowed, rate limited, overloaded or not ready): not a failure of the model.
REFUSED = frozenset({"401", "403", "429", "503"})

_table: CounterTable | None = None
_table_lock = threading.Lock()


def _forget() -> None:
    """In a forked child: its counters are its own, in a file named by its pid."""
    global _table
    _table = None


os.register_at_fork(after_in_child=_forget)


def _directory() -> str | None:
    from flaskserve.observability.metrics import MULTIPROC_ENV

    return os.environ.get(MULTIPROC_ENV) or None


def _get() -> CounterTable:
    """This process's table, opened on first use (in a worker, after the fork)."""
    global _table
    if _table is None:
        with _table_lock:
            if _table is None:
                _table = CounterTable(WIDTH, _directory())
    return _table


# -- recording (the request path: one locked update of a few integers each) ------------------


def answered(model: str, version: str, status: str, seconds: float) -> None:
    """An inference request for `model` `version` was answered with HTTP `status`."""
    if status in REFUSED:
        return
    (_table or _get()).add(
        ("m", model, version),
        SUCCESS if status < "400" else FAIL,
        1,
        int(seconds * 1e9),
        latest=(LAST_INFERENCE, time.time_ns() // 1_000_000),
    )


def queued(model: str, version: str, seconds: float) -> None:
    """A request waited `seconds` in the dynamic batcher before its batch started."""
    (_table or _get()).add(("m", model, version), QUEUE, 1, int(seconds * 1e9))


def executed(model: str, version: str, rows: int, seconds: float) -> None:
    """One successful predict of `rows` rows (-1: inputs without a batch dimension)."""
    size = str(rows) if rows >= 0 else "1"
    (_table or _get()).add(("b", model, version, size), BATCH, 1, int(seconds * 1e9))


# -- reading ---------------------------------------------------------------------------------


def _summed() -> dict[Key, list[int]]:
    """Every worker's records, summed (the latest inference time: the latest of any)."""
    directory = _directory()
    tables: list[dict[Key, Values]] = (
        list(read_directory(directory, WIDTH)) if directory else [_get().snapshot()]
    )
    totals: dict[Key, list[int]] = {}
    for table in tables:
        for key, values in table.items():
            total = totals.get(key)
            if total is None:
                totals[key] = list(values)
                continue
            for index, value in enumerate(values):
                if key[0] == "m" and index == LAST_INFERENCE:
                    total[index] = max(total[index], value)
                else:
                    total[index] += value
    return totals


def report(
    repository: ModelRepository, name: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """`{"model_stats": [...]}` for every version of every model, of model `name`, or of its
    `version`; an unknown model or version raises `ModelNotFound`."""
    if name is None and version is not None:
        raise InvalidInput("name the model whose version's statistics you want")
    entries = repository.entries() if name is None else [repository.entry(name)]
    totals = _summed()
    stats = []
    for entry in entries:
        versions = [status.version for status in entry.version_status()]
        if version is not None:
            if version not in versions:
                raise ModelNotFound(
                    f"model {entry.name!r} has no served version {version!r}; served versions: "
                    f"{', '.join(versions) or 'none'}"
                )
            versions = [version]
        for served in versions:
            stats.append(_model_stat(entry, served, totals))
    return {"model_stats": stats}


def _model_stat(entry: ModelEntry, version: str, totals: dict[Key, list[int]]) -> dict[str, Any]:
    values = totals.get(("m", entry.name, version)) or [0] * WIDTH
    sizes = {
        int(key[3]): total
        for key, total in totals.items()
        if key[0] == "b" and key[1] == entry.name and key[2] == version
    }
    executions = sum(total[BATCH] for total in sizes.values())
    compute_ns = sum(total[BATCH + 1] for total in sizes.values())
    inferences = sum(size * total[BATCH] for size, total in sizes.items())
    if not _batches(entry, version):
        # Triton's rule for a model without a batch dimension: each execution is one inference.
        inferences = executions
        sizes = {1: [executions, compute_ns]} if executions else {}
    return {
        "name": entry.name,
        "version": version,
        "last_inference": values[LAST_INFERENCE],
        "inference_count": inferences,
        "execution_count": executions,
        "inference_stats": {
            "success": _duration(values, SUCCESS),
            "fail": _duration(values, FAIL),
            "queue": _duration(values, QUEUE),
            "compute_input": {"count": executions, "ns": 0},
            "compute_infer": {"count": executions, "ns": compute_ns},
            "compute_output": {"count": executions, "ns": 0},
            "cache_hit": {"count": 0, "ns": 0},
            "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": {"count": total[BATCH], "ns": 0},
                "compute_infer": _duration(total, BATCH),
                "compute_output": {"count": total[BATCH], "ns": 0},
            }
            for size, total in sorted(sizes.items())
        ],
    }


def _duration(values: list[int], index: int) -> dict[str, int]:
    return {"count": values[index], "ns": values[index + 1]}


def _batches(entry: ModelEntry, version: str) -> bool:
    """Whether the version batches (`max_batch_size` > 0): its first dimension is the batch."""
    status = entry.versions.get(version)
    if status is not None and status.model is not None:
        return status.model.max_batch_size > 0
    return entry.config is not None and entry.config.max_batch_size > 0
