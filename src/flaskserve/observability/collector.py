"""Every worker's tallies as Prometheus families, built when `/metrics` is scraped.

The request path writes one record per event (`tallies`); a scrape sums every worker's records
and turns them into the counters, histograms and gauges listed in docs/metrics.md: requests,
latency, queue and compute time, batch size, the in-flight and queue-depth gauges, and the
per-key usage counters (`flaskserve_key_*`, with `--auth`), model load times and readiness, and
the generation timings and tokens.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from flaskserve.observability import tallies
from flaskserve.observability.tallies import LATENCY_BUCKETS

#: Rows per `predict` call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_HELP = {
    "requests": "Inference requests answered, by model, served version, protocol and HTTP status.",
    "latency": "Time from routing an inference request to its response being built.",
    "queue": "Time a request waited for the dynamic batcher before its batch started.",
    "compute": "Time of one model predict call (one batch), outputs conformed included.",
    "batch": "Rows (first dimension) given to one model predict call.",
    "in_flight": "Inference requests being handled now, summed over live workers.",
    "depth": "Requests queued in the dynamic batcher now, summed over live workers.",
    "key_requests": "Inference requests per API key id, model and HTTP status.",
    "key_items": "Inference items (rows of the first input) per API key id and model.",
    "key_bytes_in": "Request body bytes per API key id and model.",
    "key_bytes_out": "Response body bytes per API key id and model.",
    "key_compute": "Seconds requests spent in the data plane, per API key id and model.",
    "key_tokens": "Tokens of generative models per API key id, model and kind (prompt, "
    "completion).",
    "load": "Time to load one model version, once per load in every worker.",
    "ready": "1 when the model version is READY, 0 when it is not (failed to load, unloaded).",
    "first_token": "Time from a generation request's arrival to its first token.",
    "per_token": "Mean time between output tokens after the first, one observation per "
    "generation.",
    "tokens": "Tokens of generative models by kind (prompt, completion); rate() gives tokens/s.",
}
#: (name, help, record kind, buckets) of the histograms of the rare events: model loads and
#: generations.
_RARE = (
    ("flaskserve_model_load_duration_seconds", "load", "l", tallies.LOAD_BUCKETS),
    ("flaskserve_generation_time_to_first_token_seconds", "first_token", "g",
     tallies.TOKEN_BUCKETS),
    ("flaskserve_generation_time_per_output_token_seconds", "per_token", "t",
     tallies.TOKEN_BUCKETS),
)
#: (name, help, index of the value in a key record) of the per-key counters by key and model.
_KEY_SUMS = (
    ("flaskserve_key_inference_items", "key_items", tallies.KEY_ITEMS),
    ("flaskserve_key_received_bytes", "key_bytes_in", tallies.KEY_BYTES_IN),
    ("flaskserve_key_sent_bytes", "key_bytes_out", tallies.KEY_BYTES_OUT),
)


class TalliesCollector:
    """Every metric of every worker (`tallies`) as Prometheus families: per-request metrics,
    per-key usage, model loads and readiness, generations."""

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
        keys: dict[tuple[str, ...], Any] = {}
        rare: dict[str, dict[tuple[str, ...], Any]] = {kind: {} for _, _, kind, _ in _RARE}
        ready = GaugeMetricFamily("flaskserve_model_ready", _HELP["ready"],
                                  labels=["model", "version"])
        tokens = CounterMetricFamily("flaskserve_generation_tokens", _HELP["tokens"],
                                     labels=["kind", "model", "version"])
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
            elif kind == "k":
                keys[tuple(labels)] = values
            elif kind == tallies.STATE:
                ready.add_metric(labels, values[tallies.COUNT])
            elif kind in rare:
                if values[tallies.COUNT]:
                    rare[kind][tuple(labels)] = values
                if kind == "g":
                    tokens.add_metric(["completion", *labels],
                                      values[tallies.GEN_COMPLETION_TOKENS])
                    tokens.add_metric(["prompt", *labels], values[tallies.GEN_PROMPT_TOKENS])
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
        if keys:  # with `--auth` only
            yield from _key_families(CounterMetricFamily, keys)
        # A family appears once it has a series: a server with no generative model shows none.
        for name, help_key, kind, bounds in _RARE:
            if rare[kind]:
                yield _rare_histogram(HistogramMetricFamily, name, _HELP[help_key], bounds,
                                      rare[kind])
        for family in (ready, tokens):
            if family.samples:
                yield family


def _key_families(family: Any, records: dict[tuple[str, ...], Any]) -> Any:
    """The per-key counters (with `--auth`) from the key records (key id, model, status), with
    the label order and series prometheus_client's own counters had: a series of items or
    tokens appears once it counted some."""
    requests = family(
        "flaskserve_key_requests", _HELP["key_requests"], labels=["key", "model", "status"]
    )
    sums: dict[tuple[str, str], list[int]] = {}
    for (key_id, model, status), values in records.items():
        requests.add_metric([key_id, model, status], values[tallies.COUNT])
        total = sums.setdefault((key_id, model), [0] * len(values))
        for index, value in enumerate(values):
            total[index] += value
    yield requests
    for name, help_key, index in _KEY_SUMS:
        metric = family(name, _HELP[help_key], labels=["key", "model"])
        for labels, total in sums.items():
            if total[index] or index != tallies.KEY_ITEMS:
                metric.add_metric(list(labels), total[index])
        yield metric
    compute = family(
        "flaskserve_key_compute_seconds", _HELP["key_compute"], labels=["key", "model"]
    )
    tokens = family("flaskserve_key_tokens", _HELP["key_tokens"], labels=["key", "kind", "model"])
    for (key_id, model), total in sums.items():
        compute.add_metric([key_id, model], total[tallies.NS] / 1e9)
        prompt, completion = total[tallies.KEY_PROMPT_TOKENS], total[tallies.KEY_COMPLETION_TOKENS]
        if prompt or completion:
            tokens.add_metric([key_id, "prompt", model], prompt)
            tokens.add_metric([key_id, "completion", model], completion)
    yield compute
    yield tokens


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


def _rare_histogram(
    family: Any, name: str, help_text: str, bounds: tuple[float, ...],
    series: dict[tuple[str, ...], Any],
) -> Any:
    """A histogram by model and version from records keeping (COUNT, NS, buckets...)."""
    metric = family(name, help_text, labels=["model", "version"])
    end = tallies.BUCKETS + len(bounds) + 1
    for labels, values in series.items():
        metric.add_metric(
            list(labels),
            _cumulative(bounds, list(values[tallies.BUCKETS : end])),
            sum_value=values[tallies.NS] / 1e9,
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
