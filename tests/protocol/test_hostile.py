"""Hostile and odd requests on every front door: each gets a 4xx JSON error naming the problem, a
model's own exception text stays in the server log, and the server keeps serving.

Requests go out through raw `http.client`, which sends the bytes as written (no client library
tidies a shape or a header up on the way).
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from servers import Server
from waiting import eventually

ECHO_PY = """\
class Echo:
    def predict(self, x):
        return {"y": x}
"""

LEAKY_PY = """\
class Leaky:
    def predict(self, x):
        raise ValueError("secret /etc/path")
"""

SECRET = "secret /etc/path"


def python_model(root: Path, name: str, source: str, shape: list[int], batch: int = 0) -> None:
    folder = root / name
    (folder / "1").mkdir(parents=True)
    module = source.split("class ", 1)[1].split(":", 1)[0]
    (folder / "1" / f"{module.lower()}.py").write_text(source)
    toml = [
        'runtime = "python"',
        f'entrypoint = "{module.lower()}:{module}"',
        "[[inputs]]", 'name = "x"', 'datatype = "FP32"', f"shape = {shape}",
        "[[outputs]]", 'name = "y"', 'datatype = "FP32"', f"shape = {shape}",
    ]
    if batch:
        toml += ["[batching]", f"max_batch_size = {batch}"]
    (folder / "model.toml").write_text("\n".join(toml) + "\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_repo: Path):
    root = tmp_path_factory.mktemp("hostile-repo")
    shutil.copytree(digits_repo / "digits", root / "digits")
    python_model(root, "anyshape", ECHO_PY, [-1, -1, -1])
    python_model(root, "leaky", LEAKY_PY, [-1, 2])
    python_model(root, "leaky_batched", LEAKY_PY, [-1, 2], batch=8)
    running = Server([str(root), "--workers", "1"], ready_path="/v2/health/ready")
    yield running
    running.stop()


def post(
    server: Server, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """(status, headers, body); header names are case-insensitive, as HTTP's are (Granian sends
    them in lower case)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def as_json(payload: Any) -> bytes:
    return json.dumps(payload).encode()  # the stdlib writes any integer, 2**63 and beyond


def v2(name: str, shape: list[int], data: Any, datatype: str = "FP32") -> bytes:
    return as_json({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                "data": data}]})


def binary(
    name: str, shape: list[int], chunk: bytes, datatype: str = "FP32"
) -> tuple[bytes, dict[str, str]]:
    head = as_json({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                "parameters": {"binary_data_size": len(chunk)}}]})
    return head + chunk, {"Inference-Header-Content-Length": str(len(head)),
                          "Content-Type": "application/octet-stream"}


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
ROW = [0.5] * 64


def assert_refused(status: int, headers: http.client.HTTPMessage, body: bytes) -> str:
    assert 400 <= status < 500, (status, body[:500])
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error
    assert b"Traceback" not in body
    return error


# -- V2 -------------------------------------------------------------------------------------------

V2_CASES = [
    # (id, path, body, headers, words in the error)
    ("65-dims", "/v2/models/digits/infer", v2("input", [1] * 65, [0.0]), JSON, "64"),
    ("65-dims-any-shape-model", "/v2/models/anyshape/infer", v2("x", [1] * 65, [0.0]), JSON,
     "64"),
    ("dim-2**63", "/v2/models/digits/infer", v2("input", [2**63, 0], []), JSON, "shape"),
    ("dim-2**63-any-shape-model", "/v2/models/anyshape/infer", v2("x", [2**63, 0, 1], []), JSON,
     "shape"),
    ("dim-2**64", "/v2/models/anyshape/infer", v2("x", [2**64, 0, 1], []), JSON, ""),
    ("binary-[2**62,0,4]", "/v2/models/digits/infer", *binary("input", [2**62, 0, 4], b""),
     "shape"),
    ("binary-[2**62,0,4]-any-shape-model", "/v2/models/anyshape/infer",
     *binary("x", [2**62, 0, 4], b""), "shape"),
    ("binary-65-dims", "/v2/models/anyshape/infer", *binary("x", [1] * 65, b"\0" * 4), "64"),
    ("negative-dim", "/v2/models/digits/infer", v2("input", [-1, 64], ROW), JSON,
     "non-negative"),
    ("string-dims", "/v2/models/digits/infer", v2("input", ["1", "64"], ROW), JSON,
     "non-negative"),
    ("shape-and-data-disagree", "/v2/models/digits/infer", v2("input", [2, 64], ROW), JSON,
     "needs 128 values"),
    ("data-nested-70-deep", "/v2/models/digits/infer", v2("input", [1, 64], nested(0.0, 70)),
     JSON, "needs 64 values"),
    ("binary-bytes-to-fp32-model", "/v2/models/digits/infer",
     *binary("input", [1, 64], b"\1\0\0\0a" * 64, "BYTES"), "is BYTES but model 'digits'"),
    ("binary-size-disagrees-with-shape", "/v2/models/digits/infer",
     *binary("input", [1, 64], b"\0" * 255), "needs 256 bytes"),
    ("header-length-negative", "/v2/models/digits/infer", v2("input", [1, 64], ROW),
     {"Inference-Header-Content-Length": "-5"}, "Inference-Header-Content-Length"),
    ("header-length-huge", "/v2/models/digits/infer", v2("input", [1, 64], ROW),
     {"Inference-Header-Content-Length": str(2**70)}, "Inference-Header-Content-Length"),
    ("json-nested-past-the-parser-limit", "/v2/models/digits/infer", b"[" * 5000 + b"]" * 5000,
     JSON, "not valid JSON"),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "words"), [case[1:] for case in V2_CASES],
    ids=[case[0] for case in V2_CASES],
)
def test_odd_v2_requests_are_a_4xx_json_error_and_the_server_keeps_serving(
    server, path, body, headers, words
) -> None:
    error = assert_refused(*post(server, path, body, headers))
    assert words in error
    status, _, answer = post(server, "/v2/models/digits/infer", v2("input", [1, 64], ROW), JSON)
    assert status == 200, answer


# -- V1 -------------------------------------------------------------------------------------------

V1_CASES = [
    ("instances-nested-70-deep", "digits", nested(0.0, 70), "64"),
    ("instances-nested-70-deep-any-shape-model", "anyshape", nested(0.0, 70), "64"),
    ("instances-nested-65-deep", "digits", nested(0.0, 65), "64"),
    ("ragged-instances", "digits", [ROW, ROW[:63]], "needs"),
    ("too-narrow", "digits", [ROW[:63]], "expects [-1, 64]"),
    ("strings", "digits", [["x"] * 64], "must be numbers"),
    ("no-instances", "digits", [], "non-empty list"),
    ("instances-not-a-list", "digits", {"a": 1}, "non-empty list"),
    ("object-for-a-single-input-model", "digits", [{"input": ROW}], "expects [-1, 64]"),
]


@pytest.mark.parametrize(
    ("model", "instances", "words"), [case[1:] for case in V1_CASES],
    ids=[case[0] for case in V1_CASES],
)
def test_odd_v1_requests_are_a_4xx_json_error_and_the_server_keeps_serving(
    server, model, instances, words
) -> None:
    body = as_json({"instances": instances})
    error = assert_refused(*post(server, f"/v1/models/{model}:predict", body, JSON))
    assert words in error
    good = as_json({"instances": [ROW]})
    status, _, answer = post(server, "/v1/models/digits:predict", good, JSON)
    assert status == 200, answer


# -- SageMaker ------------------------------------------------------------------------------------

DIGITS = {"X-Amzn-SageMaker-Target-Model": "digits"}
SAGEMAKER_CASES = [
    ("v1-nested-70-deep", as_json({"instances": nested(0.0, 70)}), JSON, "64"),
    ("v2-65-dims", v2("input", [1] * 65, [0.0]), JSON, "64"),
    ("v2-binary-[2**62,0,4]", *binary("input", [2**62, 0, 4], b""), "shape"),
    ("csv-with-a-nul-byte", b"1,2\x00,3\n", CSV, "CSV"),
    ("csv-field-longer-than-the-parser-allows", b"1" * 200_000 + b"\n", CSV, "CSV"),
    ("csv-65-columns", b",".join([b"1"] * 65) + b"\n", CSV, "expects [-1, 64]"),
    ("csv-ragged", b",".join([b"1"] * 64) + b"\n1,2\n", CSV, "needs"),
    ("csv-empty", b"", CSV, "at least one non-empty row"),
    ("json-neither-v1-nor-v2", as_json({"rows": []}), JSON, "instances"),
]


@pytest.mark.parametrize(
    ("body", "headers", "words"), [case[1:] for case in SAGEMAKER_CASES],
    ids=[case[0] for case in SAGEMAKER_CASES],
)
def test_odd_sagemaker_invocations_are_a_4xx_json_error_and_the_server_keeps_serving(
    server, body, headers, words
) -> None:
    error = assert_refused(*post(server, "/invocations", body, {**headers, **DIGITS}))
    assert words in error
    good = b",".join([b"0.5"] * 64) + b"\n"
    status, _, answer = post(server, "/invocations", good, {**CSV, **DIGITS})
    assert status == 200, answer


# -- Refused before decoding ----------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def test_an_8_mib_bytes_tensor_sent_to_an_fp32_model_is_refused_without_being_decoded(
    server,
) -> None:
    (worker,) = server.worker_pids()
    status, _, _ = post(server, "/v2/models/digits/infer", v2("input", [1, 64], ROW), JSON)
    assert status == 200
    rows = 26_214
    body, headers = binary("input", [rows, 64], b"\1\0\0\0a" * (rows * 64), "BYTES")
    assert len(body) > 8_000_000
    Path(f"/proc/{worker}/clear_refs").write_text("5")  # the peak restarts from the RSS now
    before = peak_rss_kib(worker)
    error = assert_refused(*post(server, "/v2/models/digits/infer", body, headers))
    grown_mib = (peak_rss_kib(worker) - before) / 1024
    assert "is BYTES but model 'digits' expects FP32" in error
    # Receiving the body costs a copy or two of its 8 MiB; decoding its 1.7 million elements
    # into Python bytes objects would cost some 70 MiB more.
    assert grown_mib < 40, f"the worker's peak memory grew by {grown_mib:.0f} MiB"


# -- A model's exception stays in the log ---------------------------------------------------------


def logged_lines_with(server: Server, *words: str, timeout: float = 30) -> list[str]:
    return eventually(
        lambda: [line for line in server.log.splitlines() if all(w in line for w in words)],
        timeout=timeout,
        message=f"the server logs a line with {words}",
    )


FAILING = [
    ("v2", "/v2/models/leaky/infer", v2("x", [1, 2], [1.0, 2.0]), JSON, "leaky"),
    ("v2-binary", "/v2/models/leaky/infer", *binary("x", [1, 2], b"\0" * 8), "leaky"),
    ("v2-batched", "/v2/models/leaky_batched/infer", v2("x", [1, 2], [1.0, 2.0]), JSON,
     "leaky_batched"),
    ("v1", "/v1/models/leaky:predict", as_json({"instances": [[1.0, 2.0]]}), JSON, "leaky"),
    ("sagemaker-csv", "/invocations", b"1,2\n",
     {**CSV, "X-Amzn-SageMaker-Target-Model": "leaky_batched"}, "leaky_batched"),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "model"), [case[1:] for case in FAILING],
    ids=[case[0] for case in FAILING],
)
@pytest.mark.parametrize("client_id", [True, False], ids=["client-id", "server-id"])
def test_a_failing_model_tells_the_client_its_exception_type_and_request_id_not_its_text(
    server, path, body, headers, model, client_id
) -> None:
    sent_id = f"hostile-{time.monotonic_ns()}"
    status, answer_headers, answer = post(
        server, path, body, {**headers, "X-Request-ID": sent_id} if client_id else headers
    )
    request_id = answer_headers["X-Request-ID"]
    if client_id:
        assert request_id == sent_id
    assert status == 500
    assert answer_headers["Content-Type"] == "application/json"
    error = json.loads(answer)["error"]
    assert error == (
        f"model {model!r} failed (ValueError); request id {request_id}, see the server log"
    )
    assert b"secret" not in answer and b"/etc/path" not in answer
    assert logged_lines_with(server, request_id, SECRET), server.log[-3000:]


def test_concurrent_failures_in_one_batch_are_each_logged_with_their_own_request_id(
    server,
) -> None:
    answers: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def send(request_id: str) -> None:
        answers[request_id] = post(
            server, "/v2/models/leaky_batched/infer", v2("x", [1, 2], [1.0, 2.0]),
            {**JSON, "X-Request-ID": request_id},
        )

    ids = [f"batch-{time.monotonic_ns()}-{i}" for i in range(8)]
    threads = [threading.Thread(target=send, args=(request_id,)) for request_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for request_id in ids:
        status, headers, answer = answers[request_id]
        assert status == 500 and headers["X-Request-ID"] == request_id
        assert request_id in json.loads(answer)["error"]
        assert logged_lines_with(server, request_id, SECRET), request_id

