"""A real `flaskserve serve` with two workers, driven over HTTP like a user would."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from waiting import eventually


@pytest.fixture(scope="module")
def url(digits_server) -> str:
    return digits_server.url


def infer_body(rows: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
        ],
        **extra,
    }


def test_v2_infer_returns_correct_labels_and_echoes_the_id(url, digits_data) -> None:
    features, labels = digits_data
    response = requests.post(
        f"{url}/v2/models/digits/infer", json=infer_body(features[:20], id="req-7"), timeout=10
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "req-7"
    assert body["model_name"] == "digits" and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "INT64"
    assert (np.array(outputs["label"]["data"]) == labels[:20]).mean() >= 0.95
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(
        outputs["probabilities"]["shape"]
    )
    assert probabilities.shape == (20, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_v2_flat_data_and_output_selection(url, digits_data) -> None:
    features, labels = digits_data
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 64],
                "datatype": "FP32",
                "data": features[:2].ravel().tolist(),
            }
        ],
        "outputs": [{"name": "label"}],
    }
    response = requests.post(f"{url}/v2/models/digits/versions/1/infer", json=body, timeout=10)
    assert response.status_code == 200
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["label"]
    assert outputs[0]["data"] == labels[:2].tolist()


def test_metadata_health_and_repository_index(url) -> None:
    assert requests.get(f"{url}/v2", timeout=5).json()["name"] == "flaskserve"
    assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    assert requests.get(f"{url}/v2/health/ready", timeout=5).json() == {"ready": True}
    metadata = requests.get(f"{url}/v2/models/digits", timeout=5).json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["versions"] == ["1"]
    assert requests.get(f"{url}/v2/models/digits/versions/1/ready", timeout=5).json() == {
        "name": "digits",
        "ready": True,
    }
    index = requests.post(f"{url}/v2/repository/index", json={}, timeout=5).json()
    assert index == [{"name": "digits", "version": "1", "state": "READY"}]


def test_tritonclient_json_and_binary_paths_agree(url, digits_data) -> None:
    features, labels = digits_data
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.get_model_metadata("digits")["outputs"][1]["name"] == "probabilities"
    results = {}
    for binary in (False, True):
        tensor = triton.InferInput("input", [8, 64], "FP32")
        tensor.set_data_from_numpy(features[:8], binary_data=binary)
        outputs = [
            triton.InferRequestedOutput(name, binary_data=binary)
            for name in ("label", "probabilities")
        ]
        result = client.infer("digits", [tensor], outputs=outputs, request_id="t1")
        results[binary] = (result.as_numpy("label"), result.as_numpy("probabilities"))
    assert results[False][0].tolist() == results[True][0].tolist()
    np.testing.assert_array_equal(results[False][1], results[True][1])
    assert (results[True][0] == labels[:8]).mean() >= 0.875
    assert client.get_model_repository_index()[0]["state"] == "READY"


def test_v1_predict_gives_one_object_per_instance(url, digits_data) -> None:
    features, labels = digits_data
    response = requests.post(
        f"{url}/v1/models/digits:predict", json={"instances": features[:3].tolist()}, timeout=10
    )
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == labels[:3].tolist()
    assert len(predictions[0]["probabilities"]) == 10
    status = requests.get(f"{url}/v1/models/digits", timeout=5).json()
    assert {key: status[key] for key in ("name", "ready", "id", "object")} == {
        "name": "digits",
        "ready": True,
        "id": "digits",
        "object": "model",
    }


def test_sagemaker_ping_and_invocations_in_json_and_csv(url, digits_data) -> None:
    features, labels = digits_data
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200
    as_json = requests.post(
        f"{url}/invocations", json={"instances": features[:2].tolist()}, timeout=10
    )
    assert [p["label"] for p in as_json.json()["predictions"]] == labels[:2].tolist()
    csv_body = "\n".join(",".join(str(int(v)) for v in row) for row in features[:2])
    as_csv = requests.post(
        f"{url}/invocations", data=csv_body, headers={"Content-Type": "text/csv"}, timeout=10
    )
    assert [p["label"] for p in as_csv.json()["predictions"]] == labels[:2].tolist()
    as_v2 = requests.post(
        f"{url}/invocations",
        json=infer_body(features[:1]),
        headers={"X-Amzn-SageMaker-Target-Model": "digits"},
        timeout=10,
    )
    assert as_v2.json()["outputs"][0]["data"] == labels[:1].tolist()


def test_home_route_greets_and_unknown_urls_are_json_404(url) -> None:
    greeting = requests.get(f"{url}/home/kim", timeout=5)
    assert greeting.text == "hello,kim"
    missing = requests.get(f"{url}/nowhere", timeout=5)
    assert missing.status_code == 404
    assert "no route GET /nowhere" in missing.json()["error"]
    wrong_method = requests.get(f"{url}/v2/models/digits/infer", timeout=5)
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()


GOOD = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
BAD_REQUESTS = [
    # (description, path, body bytes or JSON, expected status, words in the error)
    ("unknown model", "/v2/models/nope/infer", {"inputs": [GOOD]}, 404, "unknown model 'nope'"),
    (
        "unknown version",
        "/v2/models/digits/versions/9/infer",
        {"inputs": [GOOD]},
        404,
        "no served version '9'",
    ),
    ("malformed JSON", "/v2/models/digits/infer", b'{"inputs": [', 400, "not valid JSON"),
    ("empty body", "/v2/models/digits/infer", b"", 400, "empty"),
    ("not an object", "/v2/models/digits/infer", [1, 2], 400, "JSON object"),
    ("no inputs", "/v2/models/digits/infer", {"inputs": []}, 400, "non-empty 'inputs'"),
    (
        "missing input",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "name": "other"}]},
        400,
        "has no input 'other'",
    ),
    (
        "unknown extra input",
        "/v2/models/digits/infer",
        {"inputs": [GOOD, {**GOOD, "name": "extra"}]},
        400,
        "has no input 'extra'",
    ),
    (
        "unknown datatype",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "datatype": "FLOAT32"}]},
        400,
        "unknown datatype 'FLOAT32'",
    ),
    (
        "non-integer dim",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "shape": [1, 64.5]}]},
        400,
        "non-negative integers",
    ),
    (
        "negative dim",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "shape": [-1, 64]}]},
        400,
        "non-negative integers",
    ),
    (
        "length differs from shape",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "data": [0.0] * 63}]},
        400,
        "needs 64 values but 'data' has 63",
    ),
    (
        "wrong rank",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "shape": [64]}]},
        400,
        "expects [-1, 64]",
    ),
    (
        "wrong element type",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "data": ["x"] * 64}]},
        400,
        "must be numbers",
    ),
    (
        "wrong datatype for the model",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "datatype": "FP64"}]},
        400,
        "is FP64 but model 'digits' expects FP32",
    ),
    (
        "shape not matching the signature",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "shape": [2, 32]}]},
        400,
        "expects [-1, 64]",
    ),
    (
        "huge declared shape",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "shape": [10**15, 64]}]},
        400,
        "has 1000000000000000 rows but model 'digits' takes at most 4096",
    ),
    (
        "unknown requested output",
        "/v2/models/digits/infer",
        {"inputs": [GOOD], "outputs": [{"name": "logits"}]},
        400,
        "has no output 'logits'",
    ),
    (
        "binary size past the body",
        "/v2/models/digits/infer",
        {"inputs": [{**GOOD, "data": None, "parameters": {"binary_data_size": 256}}]},
        400,
        "runs past the end",
    ),
    ("V1 without instances", "/v1/models/digits:predict", {"rows": []}, 400, '"instances"'),
    (
        "V1 ragged instances",
        "/v1/models/digits:predict",
        {"instances": [[1, 2], [3]]},
        400,
        "expects [-1, 64]",
    ),
    ("SageMaker CSV with text", "/invocations", b"1,2,x", 400, "not a number"),
]


@pytest.mark.parametrize(
    ("what", "path", "body", "status", "words"),
    BAD_REQUESTS,
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_clear_json_error_and_the_server_stays_healthy(
    url, digits_data, what, path, body, status, words
) -> None:
    headers = {"Content-Type": "text/csv"} if path == "/invocations" else {}
    data = body if isinstance(body, bytes) else None
    started = time.monotonic()
    response = requests.post(
        f"{url}{path}",
        data=data,
        json=None if data is not None else body,
        headers=headers,
        timeout=10,
    )
    assert time.monotonic() - started < 5, "bad requests must be answered without real work"
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert words in error
    assert "Traceback" not in response.text
    healthy = requests.post(
        f"{url}/v2/models/digits/infer", json=infer_body(digits_data[0][:1]), timeout=10
    )
    assert healthy.status_code == 200


def test_oversized_body_is_413(start_server, digits_repo) -> None:
    server = start_server([str(digits_repo), "--workers", "1", "--max-request-bytes", "1000"])
    response = requests.post(f"{server.url}/v2/models/digits/infer", data=b"x" * 5000, timeout=10)
    assert response.status_code == 413
    assert "larger than the 1000 bytes" in response.json()["error"]


def test_every_request_writes_one_access_line(digits_server) -> None:
    requests.get(f"{digits_server.url}/home/kim", timeout=5)
    wanted = '"GET /home/kim HTTP/1.1" 200'
    digits_server.wait_for_log(wanted)
    line = next(entry for entry in digits_server.log.splitlines() if wanted in entry)
    assert line.rstrip().endswith("ms")


def ready_statuses(url: str) -> set[int]:
    """The model's readiness as 20 requests in a row see it (each may reach either worker)."""
    return {requests.get(f"{url}/v2/models/digits/ready", timeout=5).status_code for _ in range(20)}


def test_unload_reaches_every_worker_and_load_brings_the_model_back(start_server, digits_repo):
    server = start_server([str(digits_repo), "--workers", "2", "--model-control"])
    url = server.url
    assert requests.post(f"{url}/v2/repository/models/digits/unload", timeout=10).status_code == 200
    eventually(lambda: ready_statuses(url) == {503}, message="every worker unloaded the model")
    not_ready = requests.post(
        f"{url}/v2/models/digits/infer", json=infer_body(np.zeros((1, 64))), timeout=5
    )
    assert not_ready.status_code == 503
    assert "unloaded" in not_ready.json()["error"]
    index = requests.post(f"{url}/v2/repository/index", timeout=5).json()
    assert index == [{"name": "digits", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert requests.post(f"{url}/v2/repository/models/digits/load", timeout=30).status_code == 200
    eventually(lambda: ready_statuses(url) == {200}, message="every worker loaded the model")
    missing = requests.post(f"{url}/v2/repository/models/nope/load", timeout=10)
    assert missing.status_code == 404


def established_per_worker(server) -> list[int]:  # type: ignore[no-untyped-def]
    """How many established connections to the server's port each worker process holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == server.port and fields[3] == "01":  # 01: ESTABLISHED
                    inodes.add(f"socket:[{fields[9]}]")
    return [
        sum(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
        for pid in sorted(server.worker_pids())
    ]


def test_a_burst_of_connections_is_spread_over_both_workers(digits_server) -> None:
    digits_server.wait_for_log("model digits version 1 is ready", count=2)  # both workers up
    # All at once, as a load balancer or `wrk -c32` opens them: unchecked, the worker that
    # wakes first accepts the whole burst and the other worker idles.
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"
    clients = []
    try:
        for _ in range(32):
            clients.append(socket.create_connection(("127.0.0.1", digits_server.port)))
            clients[-1].sendall(request)
        for client in clients:
            client.settimeout(10)
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        counts = established_per_worker(digits_server)
    finally:
        for client in clients:
            client.close()
    assert len(counts) == 2 and sum(counts) == 32, counts
    assert min(counts) >= 8, f"one worker holds most connections: {counts}"
