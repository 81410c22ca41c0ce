"""The statistics extension end to end: one real server with two workers, HTTP and gRPC,
API keys. Requests are spread over both workers (each on a new connection, until both workers'
counter files show some), then the official `tritonclient.http` and `tritonclient.grpc` clients
read statistics that add up exactly to what was sent, whichever worker answers."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from flaskserve.gate.keys import add_key
from flaskserve.observability import tallies
from flaskserve.observability.shared_counters import read_directory
from python_models import python_toml, write_python_model
from servers import Server, free_port

pytestmark = pytest.mark.timeout(300)

#: A model without a batch dimension (max_batch_size 0): Triton counts each request as one
#: inference whatever its shape.
DOUBLE_PY = """\
class Double:
    def predict(self, x):
        return {"y": x * 2}
"""
DOUBLE_TOML = python_toml("double:Double", {"x": ("FP32", [-1, 4])}, {"y": ("FP32", [-1, 4])})
DIGITS_KEY = ("digits", "1", "digits")


@dataclass
class Sent:
    """What the workload sent, to compare the statistics with."""

    ok: int = 0
    rows: int = 0
    failed: int = 0
    double_ok: int = 0
    started_ms: int = 0
    ended_ms: int = 0


def pixels(rows: int) -> list[float]:
    return [float(i % 17) for i in range(rows * 64)]


def digits_request(rows: int) -> dict:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": pixels(rows)}]
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    keys_file = tmp_path_factory.mktemp("stats-keys") / "keys.toml"
    made = {
        "ops": add_key(keys_file, "ops", admin=True),
        "digits_only": add_key(keys_file, "digits_only", models=("digits",)),
    }
    return keys_file, made


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, keys, digits_model: Path):
    root = tmp_path_factory.mktemp("stats-repo")
    shutil.copytree(digits_model, root / "digits")
    write_python_model(root, "double", DOUBLE_TOML, DOUBLE_PY)
    shared = tmp_path_factory.mktemp("stats-shared")
    grpc_port = free_port()
    server = Server(
        [str(root), "--workers", "2", "--grpc-port", str(grpc_port), "--auth", str(keys[0])],
        env={"PROMETHEUS_MULTIPROC_DIR": str(shared)},
        timeout=180,
    )
    server.wait_for_log("model digits version 1 is ready", count=2, timeout=180)
    server.grpc_port = grpc_port
    server.shared = shared
    yield server
    server.stop()


def admin(keys) -> dict[str, str]:
    return {"authorization": f"Bearer {keys[1]['ops']}"}


def workers_serving(shared: Path) -> int:
    """How many processes' counter files hold successful digits requests."""
    return sum(
        1
        for table in read_directory(str(shared), tallies.WIDTH)
        if any(key[:3] == ("r", "digits", "1") and key[4] == "200" for key in table)
    )


@pytest.fixture(scope="module")
def sent(served, keys) -> Sent:
    """The workload, sent once: digits requests of 1-4 rows over HTTP (a new connection each)
    until both workers served some, then over gRPC; bad requests; and the unbatched model."""
    headers = admin(keys)
    result = Sent(started_ms=time.time_ns() // 1_000_000)
    deadline = time.monotonic() + 120
    while result.ok < 12 or workers_serving(served.shared) < 2:
        assert time.monotonic() < deadline, "the requests never reached both workers"
        rows = result.ok % 4 + 1
        answer = requests.post(
            f"{served.url}/v2/models/digits/infer", json=digits_request(rows), headers=headers
        )
        assert answer.status_code == 200, answer.text
        result.ok += 1
        result.rows += rows
    grpc_client = tg.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    for rows in (2, 5):
        tensor = tg.InferInput("input", [rows, 64], "FP32")
        tensor.set_data_from_numpy(np.array(pixels(rows), dtype=np.float32).reshape(rows, 64))
        grpc_client.infer("digits", [tensor], headers=headers)
        result.ok += 1
        result.rows += rows
    for _ in range(3):  # wrong width: refused by the signature check, a failure of the model
        bad = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
            ]
        }
        answer = requests.post(f"{served.url}/v2/models/digits/infer", json=bad, headers=headers)
        assert answer.status_code == 400
        result.failed += 1
    refused = requests.post(f"{served.url}/v2/models/digits/infer", json=digits_request(1))
    assert refused.status_code == 401  # refused before the model: not a failure of it
    for rows in (1, 3):
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [1.0] * 4 * rows}
            ]
        }
        answer = requests.post(f"{served.url}/v2/models/double/infer", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        result.double_ok += 1
    result.ended_ms = time.time_ns() // 1_000_000
    return result


def http_client(served) -> th.InferenceServerClient:
    return th.InferenceServerClient(served.url.removeprefix("http://"))


def test_http_statistics_add_up_over_both_workers(served, keys, sent) -> None:
    stats = http_client(served).get_inference_statistics("digits", headers=admin(keys))
    [digits_stats] = stats["model_stats"]
    assert (digits_stats["name"], digits_stats["version"]) == ("digits", "1")
    inference = digits_stats["inference_stats"]
    assert inference["success"]["count"] == sent.ok
    assert inference["fail"]["count"] == sent.failed
    assert inference["queue"]["count"] == sent.ok  # every batched request passes the batcher
    assert digits_stats["inference_count"] == sent.rows
    executions = digits_stats["execution_count"]
    assert 1 <= executions <= sent.ok
    assert inference["compute_infer"]["count"] == executions
    batches = digits_stats["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == executions
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == sent.rows
    assert sum(b["compute_infer"]["ns"] for b in batches) == inference["compute_infer"]["ns"]
    assert inference["success"]["ns"] > 0 and inference["fail"]["ns"] > 0
    assert inference["compute_infer"]["ns"] > 0
    assert sent.started_ms <= digits_stats["last_inference"] <= sent.ended_ms


def test_every_worker_answers_the_same_statistics(served, keys, sent) -> None:
    """Each request on a new connection: whichever worker answers, the sums are the same."""
    answers = [
        requests.get(f"{served.url}/v2/models/digits/stats", headers=admin(keys)).json()
        for _ in range(8)
    ]
    assert all(answer == answers[0] for answer in answers)
    assert workers_serving(served.shared) == 2


def test_grpc_statistics_match_http(served, keys, sent) -> None:
    http = http_client(served).get_inference_statistics("digits", headers=admin(keys))
    client = tg.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    response = client.get_inference_statistics("digits", headers=admin(keys))
    [ours] = response.model_stats
    [theirs] = http["model_stats"]
    assert (ours.name, ours.version) == ("digits", "1")
    assert ours.last_inference == theirs["last_inference"]
    assert ours.inference_count == theirs["inference_count"] == sent.rows
    assert ours.execution_count == theirs["execution_count"]
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        value = getattr(ours.inference_stats, field)
        assert (value.count, value.ns) == tuple(theirs["inference_stats"][field].values()), field
    assert [
        (b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in ours.batch_stats
    ] == [
        (b["batch_size"], b["compute_infer"]["count"], b["compute_infer"]["ns"])
        for b in theirs["batch_stats"]
    ]
    assert ours.inference_stats.success.count == sent.ok


def test_a_model_without_batching_counts_one_inference_per_request(served, keys, sent) -> None:
    stats = http_client(served).get_inference_statistics("double", headers=admin(keys))
    [double] = stats["model_stats"]
    assert double["inference_stats"]["success"]["count"] == sent.double_ok
    assert double["inference_count"] == double["execution_count"] == sent.double_ok
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in double["batch_stats"]] == [
        (1, sent.double_ok)
    ]
    assert double["inference_stats"]["queue"]["count"] == 0  # it never waits for a batch


def test_all_models_and_one_version(served, keys, sent) -> None:
    client = http_client(served)
    everything = client.get_inference_statistics(headers=admin(keys))["model_stats"]
    assert {(s["name"], s["version"]) for s in everything} == {("digits", "1"), ("double", "1")}
    versioned = client.get_inference_statistics("digits", "1", headers=admin(keys))
    model = client.get_inference_statistics("digits", headers=admin(keys))
    assert versioned == model
    grpc_client = tg.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    names = {s.name for s in grpc_client.get_inference_statistics(headers=admin(keys)).model_stats}
    assert names == {"digits", "double"}
    assert "statistics" in requests.get(f"{served.url}/v2").json()["extensions"]


def test_unknown_model_or_version_is_not_found(served, keys, sent) -> None:
    for path in ("/v2/models/nope/stats", "/v2/models/digits/versions/9/stats"):
        answer = requests.get(served.url + path, headers=admin(keys))
        assert answer.status_code == 404
        assert "served" in answer.json()["error"]
    client = tg.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    for name, version in (("nope", ""), ("digits", "9")):
        with pytest.raises(InferenceServerException) as caught:
            client.get_inference_statistics(name, version, headers=admin(keys))
        assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_need_a_key_allowed_on_the_model_or_an_admin_key(served, keys) -> None:
    digits_only = {"authorization": f"Bearer {keys[1]['digits_only']}"}
    url = served.url
    assert requests.get(f"{url}/v2/models/digits/stats").status_code == 401
    assert requests.get(f"{url}/v2/models/digits/stats", headers=digits_only).status_code == 200
    assert requests.get(f"{url}/v2/models/double/stats", headers=digits_only).status_code == 403
    refused = requests.get(f"{url}/v2/models/stats", headers=digits_only)
    assert refused.status_code == 403 and "admin" in refused.json()["error"]
    client = tg.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    assert client.get_inference_statistics("digits", headers=digits_only).model_stats
    for name in ("double", ""):
        with pytest.raises(InferenceServerException) as caught:
            client.get_inference_statistics(name, headers=digits_only)
        assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("digits")
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
