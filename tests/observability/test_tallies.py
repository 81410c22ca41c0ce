"""The per-request tallies behind /metrics and the statistics extension: what a reader sums."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flaskserve.observability import metrics, statistics, tallies


def tally_in_a_worker_that_dies(shared: Path, code: str) -> None:
    """Run `code` (calls of `tallies`) in a process that then exits, as a killed worker does."""
    subprocess.run(
        [sys.executable, "-c", "from flaskserve.observability import tallies\n" + code],
        env={**os.environ, tallies.MULTIPROC_ENV: str(shared)},
        check=True,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(tallies.MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(tallies, "_table", None)
    return tmp_path


def test_a_dead_workers_counts_stay_and_its_gauges_go(shared: Path) -> None:
    # A worker that answered 2 requests and died with 3 in flight and 1 queued.
    tally_in_a_worker_that_dies(
        shared,
        "for _ in range(2): tallies.request_answered('digits', '1', 'v2', '200', 0.001)\n"
        "for _ in range(3): tallies.request_started('digits')\n"
        "tallies.queue_changed('digits', '1', 1)\n",
    )
    # This worker: one answered request, one in flight.
    tallies.request_answered("digits", "1", "v2", "200", 0.004)
    tallies.request_started("digits")

    body, _ = metrics.exposition()
    read = samples(body.decode())
    labels = (("model", "digits"), ("protocol", "v2"), ("status", "200"), ("version", "1"))
    assert read[("flaskserve_requests_total", labels)] == 3
    assert read[("flaskserve_requests_in_flight", (("model", "digits"),))] == 1
    assert ("flaskserve_queue_depth", (("model", "digits"), ("version", "1"))) not in read
    stats = statistics._summed()
    assert stats[("m", "digits", "1")][statistics.SUCCESS] == 3


def test_histogram_buckets_match_prometheus_client(shared: Path) -> None:
    """Every boundary lands in the bucket prometheus_client's own Histogram would put it in
    (`le` is inclusive), and the sum and count agree."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    values = [0.0, 0.0005, 0.00051, 0.001, 0.02, 0.025, 1.0, 59.9, 60.0, 61.0, 1e6]
    registry = CollectorRegistry()
    reference = Histogram(
        "flaskserve_queue_duration_seconds",
        "x",
        ["model", "version"],
        buckets=tallies.LATENCY_BUCKETS,
        registry=registry,
    )
    for value in values:
        reference.labels("digits", "1").observe(value)
        tallies.queue_waited("digits", "1", value)
    ours = samples(metrics.exposition()[0].decode())
    theirs = samples(generate_latest(registry).decode())
    for key, value in theirs.items():
        if key[0].endswith(("_bucket", "_count")):
            assert ours[key] == value, key
    total = ("flaskserve_queue_duration_seconds_sum", (("model", "digits"), ("version", "1")))
    assert ours[total] == pytest.approx(sum(values))


def test_a_worker_reusing_a_dead_workers_pid_keeps_its_counts_not_its_gauges(
    shared: Path,
) -> None:
    # This process's file, as a worker with this pid left it when it was killed.
    table = tallies._get()
    table.observe(("r", "digits", "1", "v2", "200"), 1_000, tallies.BUCKETS)
    table.change(("i", "digits"), 2)
    tallies._forget()  # a new process with the same pid opens the same file

    tallies.request_answered("digits", "1", "v2", "200", 0.001)
    read = samples(metrics.exposition()[0].decode())
    labels = (("model", "digits"), ("protocol", "v2"), ("status", "200"), ("version", "1"))
    assert read[("flaskserve_requests_total", labels)] == 2
    assert read[("flaskserve_requests_in_flight", (("model", "digits"),))] == 0


class LiveWorker:
    """Another worker, alive until `stop`: it runs each piece of code it is given (calls of
    `tallies`) in its own process, with its own table in the shared folder."""

    def __init__(self, shared: Path) -> None:
        loop = (
            "import sys\nfrom flaskserve.observability import tallies\n"
            "for line in sys.stdin:\n    exec(line.replace('\\\\n', '\\n'))\n"
            "    print('done', flush=True)\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", loop],
            env={**os.environ, tallies.MULTIPROC_ENV: str(shared)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def run(self, code: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(code.replace("\n", "\\n") + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "done\n"

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def ready(labels: tuple[str, str]) -> float | None:
    read = samples(metrics.exposition()[0].decode())
    return read.get(("flaskserve_model_ready", (("model", labels[0]), ("version", labels[1]))))


def test_readiness_is_what_a_live_worker_recorded_last(shared: Path) -> None:
    other = LiveWorker(shared)
    try:
        other.run("tallies.states({('digits', '1'): True, ('only-there', '1'): True})")
        # This worker (the one scraped) recorded later: its view wins where it has one.
        tallies.states({("digits", "1"): False})
        assert ready(("digits", "1")) == 0
        assert ready(("only-there", "1")) == 1  # known to the other live worker alone
        other.run("tallies.states({('digits', '1'): True})")
        assert ready(("digits", "1")) == 1
    finally:
        other.stop()
    # A worker that is gone says nothing: the live one's value stands, what it alone knew goes.
    assert ready(("digits", "1")) == 0
    assert ready(("only-there", "1")) is None


def test_a_worker_stopping_or_reusing_a_dead_workers_pid_drops_its_readiness(
    shared: Path,
) -> None:
    tallies.states({("digits", "1"): True})
    tallies._forget()  # a new process with the same pid opens the same file
    assert ready(("digits", "1")) is None
    tallies.states({("digits", "1"): True})
    assert ready(("digits", "1")) == 1
    tallies.worker_exiting()
    assert ready(("digits", "1")) is None


@pytest.mark.parametrize(
    ("name", "bounds", "record"),
    [
        ("flaskserve_model_load_duration_seconds", tallies.LOAD_BUCKETS,
         lambda value: tallies.loaded("tiny", "1", value)),
        ("flaskserve_generation_time_to_first_token_seconds", tallies.TOKEN_BUCKETS,
         lambda value: tallies.generated("tiny", "1", value, None, 3, 1)),
        ("flaskserve_generation_time_per_output_token_seconds", tallies.TOKEN_BUCKETS,
         lambda value: tallies.generated("tiny", "1", None, value, 3, 2)),
    ],
)
def test_load_and_generation_histograms_match_prometheus_client(
    shared: Path, name: str, bounds: tuple[float, ...], record
) -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    values = [0.0, 0.001, 0.0011, 0.01, 0.5, 10.0, 300.0, 301.0, 1e6]
    registry = CollectorRegistry()
    reference = Histogram(name, "x", ["model", "version"], buckets=bounds, registry=registry)
    for value in values:
        reference.labels("tiny", "1").observe(value)
        record(value)
    ours = samples(metrics.exposition()[0].decode())
    theirs = samples(generate_latest(registry).decode())
    for key, value in theirs.items():
        if key[0].endswith(("_bucket", "_count")):
            assert ours[key] == value, key
    total = (f"{name}_sum", (("model", "tiny"), ("version", "1")))
    assert ours[total] == pytest.approx(sum(values))


def test_every_generation_counts_its_tokens_with_or_without_timings(shared: Path) -> None:
    tallies.generated("tiny", "1", 0.02, 0.005, 7, 5)
    tallies.generated("tiny", "1", None, None, 4, 0)  # no token made: no timings
    read = samples(metrics.exposition()[0].decode())
    labels = (("model", "tiny"), ("version", "1"))
    assert read[("flaskserve_generation_tokens_total", (("kind", "prompt"), *labels))] == 11
    assert read[("flaskserve_generation_tokens_total", (("kind", "completion"), *labels))] == 5
    assert read[("flaskserve_generation_time_to_first_token_seconds_count", labels)] == 1
    assert read[("flaskserve_generation_time_per_output_token_seconds_count", labels)] == 1
