"""/metrics on a server with two workers: each request counted once, whichever worker took it."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from flaskserve.app import create_app
from flaskserve.settings import Settings
from waiting import eventually

PIXELS = [0.0] * 64


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def total(samples, name: str, **labels: str) -> float:
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def v2_body(rows: int = 1, width: int = 64) -> dict:
    return {"inputs": [{"name": "input", "shape": [rows, width], "datatype": "FP32",
                        "data": [0.0] * (rows * width)}]}


def test_counts_add_up_exactly_across_two_workers_and_unloads_show(
    start_server, digits_repo
) -> None:
    server = start_server(
        [str(digits_repo), "--workers", "2", "--threads", "4", "--model-control"]
    )
    url = server.url
    eventually(  # each worker records its load time when it has booted
        lambda: total(scrape(url), "flaskserve_model_load_duration_seconds_count") == 2,
        timeout=60, message="both workers have booted",
    )
    sent = {("v2", "200"): 24, ("v1", "200"): 10, ("sagemaker", "200"): 6, ("v2", "400"): 5}

    def call(kind: tuple[str, str]) -> int:
        protocol, status = kind
        with requests.Session() as session:  # a new connection each time: both workers answer
            if protocol == "v1":
                response = session.post(f"{url}/v1/models/digits:predict",
                                        json={"instances": [PIXELS]}, timeout=10)
            elif protocol == "sagemaker":
                response = session.post(f"{url}/invocations", json=v2_body(), timeout=10)
            else:
                width = 64 if status == "200" else 63
                response = session.post(f"{url}/v2/models/digits/infer", json=v2_body(1, width),
                                        timeout=10)
        return response.status_code

    jobs = [kind for kind, count in sent.items() for _ in range(count)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, jobs))
    assert sorted(statuses) == sorted(int(status) for _, status in jobs)

    for _ in range(6):  # each scrape lands on either worker; all must see every request
        samples = scrape(url)
        assert total(samples, "flaskserve_requests_total") == len(jobs)
        for (protocol, status), count in sent.items():
            assert total(samples, "flaskserve_requests_total", model="digits", version="1",
                         protocol=protocol, status=status) == count
        assert total(samples, "flaskserve_request_duration_seconds_count") == len(jobs)
        buckets = [s for s in samples if s[0] == "flaskserve_request_duration_seconds_bucket"
                   and s[1]["protocol"] == "v2" and s[1]["le"] == "+Inf"]
        assert sum(value for *_, value in buckets) == 29
        assert total(samples, "flaskserve_requests_in_flight") == 0
        # One compute and one batch-size observation per predict; every valid row in a batch.
        rows = sent[("v2", "200")] + sent[("v1", "200")] + sent[("sagemaker", "200")]
        assert total(samples, "flaskserve_batch_size_sum", model="digits") == rows
        assert total(samples, "flaskserve_queue_duration_seconds_count", model="digits") == rows
        predicts = total(samples, "flaskserve_compute_duration_seconds_count", model="digits")
        assert predicts == total(samples, "flaskserve_batch_size_count", model="digits")
        assert 1 <= predicts <= rows
        assert total(samples, "flaskserve_queue_depth") == 0
        assert total(samples, "flaskserve_model_ready", model="digits", version="1") == 1
        assert total(samples, "flaskserve_model_load_duration_seconds_count", model="digits") == 2

    assert requests.post(f"{url}/v2/repository/models/digits/unload",
                         timeout=10).status_code == 200
    # Every worker applies the unload (within its poll interval); then any scrape says 0.
    eventually(
        lambda: all(total(scrape(url), "flaskserve_model_ready", model="digits") == 0
                    for _ in range(4)),
        message="four scrapes in a row see the model unloaded",
    )

    # A SIGHUP reload: each worker builds its app again, loading every model, and keeps the
    # unload; scrapes agree whichever worker answers. A load then shows on every scrape.
    os.kill(server.process.pid, signal.SIGHUP)
    eventually(
        lambda: total(scrape(url), "flaskserve_model_load_duration_seconds_count") == 4,
        timeout=60, message="both workers have reloaded",
    )
    eventually(
        lambda: len({total(scrape(url), "flaskserve_model_ready", model="digits", version="1")
                     for _ in range(4)}) == 1,
        message="four scrapes in a row agree after the reload",
    )
    assert requests.post(f"{url}/v2/repository/models/digits/load",
                         timeout=30).status_code == 200
    eventually(
        lambda: all(total(scrape(url), "flaskserve_model_ready", model="digits",
                          version="1") == 1 for _ in range(4)),
        message="four scrapes in a row see the model loaded again",
    )


def test_unknown_models_share_one_label(digits_repo) -> None:
    client = create_app(Settings(repository=str(digits_repo))).test_client()
    before = client.get("/metrics").get_data(as_text=True)
    for name in ("nope", "also-nope", "x" * 40):
        assert client.post(f"/v2/models/{name}/infer", json=v2_body()).status_code == 404
    after = client.get("/metrics").get_data(as_text=True)
    unknown = {"model": "(unknown)", "status": "404"}
    assert (total(parse(after), "flaskserve_requests_total", **unknown)
            - total(parse(before), "flaskserve_requests_total", **unknown)) == 3
    assert "nope" not in after


def test_operator_folder_is_cleaned_and_dead_workers_leave_no_live_gauges(
    start_server, digits_repo, tmp_path
) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counters_999999.stats").write_bytes(b"stale from a previous run")
    server = start_server([str(digits_repo), "--workers", "2"],
                          env={"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    assert not (folder / "counters_999999.stats").exists()
    for _ in range(10):
        with requests.Session() as session:
            assert session.post(f"{server.url}/v2/models/digits/infer", json=v2_body(),
                                timeout=10).status_code == 200
    def pids() -> set[int]:
        return {int(path.stem.rsplit("_", 1)[1]) for path in folder.glob("counters_*.stats")}

    eventually(  # each worker records its model's load time and readiness when it has booted
        lambda: len(pids()) >= 2, message="both workers have booted"
    )
    workers = pids()
    assert len(workers) == 2, "workers write their metrics to the operator's folder"
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: pids() - workers, message="a replacement has booted")
    assert victim in pids(), "the dead worker's tallies are kept"
    samples = scrape(server.url)
    # The dead worker's counts stay: nothing served is forgotten.
    assert total(samples, "flaskserve_requests_total", model="digits") == 10
    assert total(samples, "flaskserve_model_load_duration_seconds_count", model="digits") == 3
    assert total(samples, "flaskserve_requests_in_flight") == 0
    assert total(samples, "flaskserve_model_ready", model="digits", version="1") == 1


def test_made_up_versions_share_one_label_and_do_not_grow_metrics(
    start_server, digits_repo
) -> None:
    server = start_server([str(digits_repo), "--workers", "1"])

    def infer(version: str) -> int:
        url = f"{server.url}/v2/models/digits/versions/{version}/infer"
        return requests.post(url, json=v2_body(), timeout=10).status_code

    assert infer("made-up-0") == 404  # the (unknown) series exist from here on
    before = requests.get(f"{server.url}/metrics", timeout=10).text
    made_up = [f"made-up-{i}-{'v' * 200}" for i in range(1, 51)]
    assert {infer(version) for version in made_up} == {404}
    after = requests.get(f"{server.url}/metrics", timeout=10).text
    assert len(after) - len(before) < 100  # only digits of the counts change
    assert "made-up" not in after
    series = {(name, tuple(sorted(labels.items()))) for name, labels, _ in parse(after)}
    assert series == {(name, tuple(sorted(labels.items()))) for name, labels, _ in parse(before)}
    unknown = {"model": "digits", "version": "(unknown)", "status": "404"}
    assert (total(parse(after), "flaskserve_requests_total", **unknown)
            - total(parse(before), "flaskserve_requests_total", **unknown)) == 50
