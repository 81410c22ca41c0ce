"""The raw in-process limit: each default model's `predict`, called directly, no HTTP at all.

    python bench/raw_limit.py REPOSITORY [--secs 3] [--reps 3]

Loads every model of REPOSITORY with flaskserve's own runtimes (so the limit is the same model
the server runs, with the same runtime settings) and prints one JSON line per measurement: items
per second at several batch sizes, the median of `--reps` runs of `--secs` seconds each. For the
digits model it also measures the batcher in-process: its cost at concurrency 1 (where it must
cost nothing) and its gain with 16 threads submitting at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flaskserve.app import runtime_options
from flaskserve.core.batching import Batcher, run_model
from flaskserve.core.model import Model
from flaskserve.core.repository import ModelRepository
from flaskserve.runtimes.registry import loader
from flaskserve.settings import Settings

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the quiet river.",
    "Our team shipped the new billing service to production late on Friday night.",
    "Heavy rain is expected across the northern coast for most of the coming week.",
    "She ordered a large coffee and a blueberry muffin before the morning meeting.",
]


def timed(fn: Callable[[], Any], secs: float, reps: int) -> tuple[float, list[float]]:
    """Median seconds per call over `reps` runs of about `secs` seconds, after a warm-up."""
    fn()
    warm_end = time.perf_counter() + min(0.5, secs)
    while time.perf_counter() < warm_end:
        fn()
    per_call = []
    for _ in range(reps):
        calls = 0
        start = time.perf_counter()
        end = start + secs
        while True:
            fn()
            calls += 1
            now = time.perf_counter()
            if now >= end:
                break
        per_call.append((now - start) / calls)
    return statistics.median(per_call), per_call


def _calls(per_call: list[float], secs: float) -> float:
    """About how many calls `timed` made in its measured runs (warm-up excluded)."""
    return sum(secs / seconds for seconds in per_call) or 1.0


def sample_inputs(model: Model, batch: int) -> dict[str, np.ndarray]:
    """A batch for W1 (digits rows) or W2 (sentences); other models are not measured."""
    spec = model.inputs[0]
    if spec.datatype == "BYTES":
        texts = [SENTENCES[i % len(SENTENCES)].encode() for i in range(batch)]
        return {spec.name: np.array(texts, dtype=object)}
    from sklearn.datasets import load_digits

    rows = load_digits().data[:batch].astype(spec.dtype)
    return {spec.name: rows}


def measure_model(model: Model, batches: list[int], secs: float, reps: int) -> list[dict]:
    results = []
    for batch in batches:
        inputs = sample_inputs(model, batch)
        cpu_start = time.process_time()
        seconds, runs = timed(lambda inputs=inputs: run_model(model, inputs), secs, reps)
        cpu_per_call = (time.process_time() - cpu_start) / _calls(runs, secs)
        results.append(
            {
                "kind": "raw",
                "model": model.name,
                "platform": model.platform,
                "batch": batch,
                "items_per_s": round(batch / seconds, 1),
                "ms_per_call": round(seconds * 1000, 3),
                "all_items_per_s": [round(batch / s, 1) for s in runs],
                "cpu_ms_per_item": round(cpu_per_call * 1000 / batch, 4),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def measure_batcher(model: Model, secs: float, reps: int) -> list[dict]:
    """What the batcher costs and wins in-process: one thread submitting requests one after the
    other (concurrency 1, where it must cost nothing) and 16 threads at once (where it batches),
    each against calling the model directly; interleaved over rounds, medians reported."""
    inputs = sample_inputs(model, 1)
    results = []
    for threads in (1, 16):
        rates: dict[str, list[float]] = {"direct": [], "batcher": []}
        batches: list[float] = []
        for _ in range(max(reps, 3)):
            for mode in rates:
                rate, batch = _threaded_rate(model, inputs, threads, secs / 3, mode == "batcher")
                rates[mode].append(rate)
                if mode == "batcher":
                    batches.append(batch)
        direct, batched = statistics.median(rates["direct"]), statistics.median(rates["batcher"])
        results.append(
            {
                "kind": "batcher",
                "model": model.name,
                "threads": threads,
                "direct_per_s": round(direct, 1),
                "batcher_per_s": round(batched, 1),
                "mean_batch": round(statistics.median(batches), 2),
                "us_per_request_direct": round(1e6 / direct * threads, 1),
                "us_per_request_batcher": round(1e6 / batched * threads, 1),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def _threaded_rate(
    model: Model, inputs: dict[str, np.ndarray], threads: int, secs: float, batched: bool
) -> tuple[float, float]:
    """Requests per second of `threads` threads calling in a loop, and the mean batch size."""
    batcher = Batcher(model) if batched else None
    calls = [0]
    predict = model.predict_fn

    def counting(arrays: dict[str, np.ndarray]) -> Any:
        calls[0] += 1
        return predict(arrays)

    model.predict_fn = counting
    done = [0] * threads
    stop = time.perf_counter() + secs

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            if batcher is None:
                run_model(model, inputs)
            else:
                batcher.submit(inputs)
            done[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        model.predict_fn = predict
        if batcher is not None:
            batcher.close()
    return sum(done) / (time.perf_counter() - started), sum(done) / max(calls[0], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--secs", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    # The runtime options the server gives its workers (threads, spinning), so the limit is
    # measured with the same settings the served model has.
    repository = ModelRepository(args.repository, loader(runtime_options(Settings.from_env())))
    repository.load_all()
    plans = {"digits": [1, 16, 64], "minilm": [1, 8, 32]}
    for entry in repository.entries():
        if entry.default is None or entry.name not in plans:
            continue
        measure_model(entry.default, plans[entry.name], args.secs, args.reps)
        if entry.name == "digits" and entry.default.max_batch_size > 0:
            measure_batcher(entry.default, args.secs, args.reps)


if __name__ == "__main__":
    main()
