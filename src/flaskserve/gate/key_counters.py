"""Per-key usage as Prometheus counters, labelled by key *id* (never the key itself).

The counters register in prometheus_client's default registry, which `GET /metrics`
(`flaskserve.observability`) exposes, summed over the workers in multiprocess mode.
prometheus_client picks multiprocess mode when it is first imported, so, as in
`observability.metrics`, nothing here imports it before the first request is counted (in a
worker, after the fork). Label sets stay bounded: key ids come from the keys file, and a model
name the repository does not know is counted as "(unknown)".
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("flaskserve.usage")

UNKNOWN_MODEL = "(unknown)"


class KeyCounters:
    """The counters, created on first use; children are cached by label values."""

    def __init__(self) -> None:
        from prometheus_client import Counter

        labels = ["key", "model"]
        self.requests = Counter(
            "flaskserve_key_requests",
            "Inference requests per API key id, model and HTTP status.",
            ["key", "model", "status"],
        )
        self.items = Counter(
            "flaskserve_key_inference_items",
            "Inference items (rows of the first input) per API key id and model.",
            labels,
        )
        self.bytes_in = Counter(
            "flaskserve_key_received_bytes", "Request body bytes per API key id and model.", labels
        )
        self.bytes_out = Counter(
            "flaskserve_key_sent_bytes", "Response body bytes per API key id and model.", labels
        )
        self.compute = Counter(
            "flaskserve_key_compute_seconds",
            "Seconds requests spent in the data plane, per API key id and model.",
            labels,
        )
        self.tokens = Counter(
            "flaskserve_key_tokens",
            "Tokens of generative models per API key id, model and kind (prompt, completion).",
            ["key", "model", "kind"],
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        cache_key = (id(metric), *values)
        found = self._children.get(cache_key)
        if found is None:
            found = self._children[cache_key] = metric.labels(*values)
        return found


_counters: KeyCounters | None = None
_unavailable = False
_lock = threading.Lock()


def _get() -> KeyCounters | None:
    global _counters, _unavailable
    if _counters is None and not _unavailable:
        with _lock:
            if _counters is None and not _unavailable:
                try:
                    _counters = KeyCounters()
                except ImportError:
                    _unavailable = True
                    log.warning("prometheus_client is not installed; per-key counters are off")
    return _counters


def count(
    key_id: str,
    model: str,
    status: int,
    items: int,
    bytes_in: int,
    bytes_out: int,
    compute_seconds: float,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> None:
    c = _get()
    if c is None:
        return
    c.child(c.requests, key_id, model, str(status)).inc()
    if items:
        c.child(c.items, key_id, model).inc(items)
    c.child(c.bytes_in, key_id, model).inc(bytes_in)
    c.child(c.bytes_out, key_id, model).inc(bytes_out)
    c.child(c.compute, key_id, model).inc(compute_seconds)
    if prompt_tokens or completion_tokens:
        c.child(c.tokens, key_id, model, "prompt").inc(prompt_tokens)
        c.child(c.tokens, key_id, model, "completion").inc(completion_tokens)
