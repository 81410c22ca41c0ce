"""Triton's statistics extension: per model version counts and times, summed over every worker.

Read from the records every inference already leaves in `tallies` (requests answered, waits in
the batcher, predicts by batch size), which `/metrics` reads too, so whichever worker answers a
statistics request reports what all of them served. What each number means, and where
flaskserve differs from Triton, is in docs/metrics.md ("Statistics extension").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flaskserve.core.errors import InvalidInput, ModelNotFound
from flaskserve.observability import tallies
from flaskserve.observability.shared_counters import Key

if TYPE_CHECKING:
    from flaskserve.core.repository import ModelEntry, ModelRepository

#: The values of a model version's summary ("m", model, version): (count, ns) pairs, then the
#: time of the latest request.
SUCCESS, FAIL, QUEUE, LAST_INFERENCE = 0, 2, 4, 6
WIDTH = 7
#: A batch size's summary ("b", model, version, size) holds (predicts, their ns) at 0; the
#: model's execution count, compute time and inference count are sums over its batch sizes.
BATCH = 0
#: Statuses of requests the service layer refused before the model was asked (no key, not
#: allowed, rate limited, overloaded or not ready): not a failure of the model.
REFUSED = frozenset({"401", "403", "429", "503"})


def _summed() -> dict[Key, list[int]]:
    """Every worker's tallies, as summaries per model version and per batch size."""
    totals: dict[Key, list[int]] = {}
    for key, values in tallies.summed().items():
        kind = key[0]
        if kind == "r":
            status = key[4]
            if status in REFUSED:
                continue
            summary = totals.setdefault(("m", key[1], key[2]), [0] * WIDTH)
            index = SUCCESS if status < "400" else FAIL
            summary[index] += values[tallies.COUNT]
            summary[index + 1] += values[tallies.NS]
            summary[LAST_INFERENCE] = max(summary[LAST_INFERENCE], values[tallies.LATEST])
        elif kind == "q":
            summary = totals.setdefault(("m", key[1], key[2]), [0] * WIDTH)
            summary[QUEUE] += values[tallies.COUNT]
            summary[QUEUE + 1] += values[tallies.NS]
        elif kind == "c":
            size = key[3] if not key[3].startswith("-") else "1"
            summary = totals.setdefault(("b", key[1], key[2], size), [0, 0])
            summary[BATCH] += values[tallies.COUNT]
            summary[BATCH + 1] += values[tallies.NS]
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
