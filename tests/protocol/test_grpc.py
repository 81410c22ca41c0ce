"""The V2 gRPC front door, end to end: the official `tritonclient.grpc` against real two-worker
servers started with `--grpc-port`, compared with the HTTP path; keys in the call
metadata; SIGTERM drain of a running call; SIGHUP reload. Plus the wire contract itself: our
inference.proto compiles to the committed descriptor and matches the published protocol's
field numbers."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import tritonclient.http as th
from test_binary import MIRROR_PY, expected, mirror_toml, sample
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from flaskserve.core.model import DATATYPES
from flaskserve.gate.keys import add_key
from flaskserve.protocol.grpc import messages
from flaskserve.protocol.grpc.descriptor import SERIALIZED
from flaskserve.protocol.grpc.tensors import CONTENTS_FIELD
from python_models import (
    HELD_PY,
    HELD_TOML,
    SCALED_PY,
    SCALED_TOML,
    calls_started,
    write_held,
    write_python_model,
)
from servers import Server, free_port
from waiting import eventually

#: Servers with two workers boot slowly on a shared machine; the default 120 s is tight.
pytestmark = pytest.mark.timeout(300)

MAX_REQUEST_BYTES = 1 << 20

def grpc_client(port: int) -> tg.InferenceServerClient:
    client = tg.InferenceServerClient(f"127.0.0.1:{port}")
    eventually(_live(client), message="a worker serves gRPC")
    return client


def _live(client: tg.InferenceServerClient):
    def live() -> bool:
        try:
            return bool(client.is_server_live())
        except InferenceServerException:
            return False

    return live


def answers_on_a_new_connection(port: int, timeout: float = 5) -> bool:
    """Whether ServerLive answers a client that has just connected, within `timeout` s."""
    client = tg.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        return bool(client.is_server_live(client_timeout=timeout))
    except InferenceServerException:
        return False
    finally:
        client.close()


def status_of(call) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    root = tmp_path_factory.mktemp("grpc-repo")
    write_python_model(root, "mirror", mirror_toml(), MIRROR_PY)
    # The same model without FP16, which has no typed contents field.
    write_python_model(root, "typed", mirror_toml(CONTENTS_FIELD), MIRROR_PY)
    write_python_model(root, "scaled", SCALED_TOML, SCALED_PY)
    shutil.copytree(digits_model, root / "digits")
    return root


@pytest.fixture(scope="module")
def served(repo):
    port = free_port()
    server = Server(
        [
            str(repo),
            "--workers",
            "2",
            "--grpc-port",
            str(port),
            "--max-request-bytes",
            str(MAX_REQUEST_BYTES),
        ],
        timeout=180,
    )
    try:
        server.wait_for_log("model digits version 1 is ready", count=2, timeout=180)
        yield server, port
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(served) -> tg.InferenceServerClient:
    return grpc_client(served[1])


def test_health_and_metadata_rpcs_answer_as_the_http_routes_do(served, client) -> None:
    server, _ = served
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.is_model_ready("digits") is True
    assert client.is_model_ready("digits", "1") is True
    http = requests.get(f"{server.url}/v2", timeout=10).json()
    meta = client.get_server_metadata(as_json=True)
    assert (meta["name"], meta["version"], meta["extensions"]) == (
        http["name"],
        http["version"],
        http["extensions"],
    )
    model = client.get_model_metadata("digits", as_json=True)
    http_model = requests.get(f"{server.url}/v2/models/digits", timeout=10).json()
    assert model["name"] == "digits" and model["versions"] == http_model["versions"]
    assert model["platform"] == http_model["platform"]
    for side in ("inputs", "outputs"):
        assert [
            {"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]}
            for t in model[side]
        ] == http_model[side]


def test_digits_predictions_equal_the_http_path(served, client, digits_data) -> None:
    server, _ = served
    features, labels = digits_data
    tensor = tg.InferInput("input", [32, 64], "FP32")
    tensor.set_data_from_numpy(features[:32])
    result = client.infer("digits", [tensor], request_id="req-7")
    assert result.get_response().id == "req-7"
    assert result.get_response().model_version == "1"

    http = th.InferenceServerClient(server.url.removeprefix("http://"))
    http_tensor = th.InferInput("input", [32, 64], "FP32")
    http_tensor.set_data_from_numpy(features[:32])
    http_result = http.infer("digits", [http_tensor])
    for name in ("label", "probabilities"):
        np.testing.assert_array_equal(result.as_numpy(name), http_result.as_numpy(name))
    assert (result.as_numpy("label") == labels[:32]).mean() >= 0.95


def test_every_datatype_round_trips_and_equals_the_http_result(served, client) -> None:
    server, _ = served
    inputs = []
    http_inputs = []
    for datatype in DATATYPES:
        array = sample(datatype)
        tensor = tg.InferInput(f"in_{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
        http_tensor = th.InferInput(f"in_{datatype}", list(array.shape), datatype)
        http_tensor.set_data_from_numpy(array)
        http_inputs.append(http_tensor)
    result = client.infer("mirror", inputs)
    http = th.InferenceServerClient(server.url.removeprefix("http://"))
    http_result = http.infer("mirror", http_inputs)
    for datatype in DATATYPES:
        got = result.as_numpy(f"out_{datatype}")
        want = expected(datatype, sample(datatype))
        assert result.get_output(f"out_{datatype}").datatype == datatype
        assert got.shape == want.shape and got.dtype == want.dtype, datatype
        assert got.tolist() == want.tolist(), datatype
        assert got.tolist() == http_result.as_numpy(f"out_{datatype}").tolist(), datatype


def test_a_model_that_reads_parameters_gets_the_calls_parameters_as_over_http(
    served, client
) -> None:
    server, _ = served
    http = th.InferenceServerClient(server.url.removeprefix("http://"))
    for kit, caller in ((tg, client), (th, http)):
        tensor = kit.InferInput("x", [2], "INT64")
        tensor.set_data_from_numpy(np.array([1, 2], np.int64))
        result = caller.infer("scaled", [tensor], parameters={"scale": 3, "note": "hi"})
        assert result.as_numpy("y").tolist() == [3, 6], kit.__name__
        assert result.as_numpy("count").tolist() == [2, 2], kit.__name__


def typed_request(model: str, arrays: dict[str, np.ndarray]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for datatype, array in arrays.items():
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=array.shape)
        getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    return request


def decode_raw(datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=DATATYPES[datatype]).reshape(shape)
    values, offset = [], 0
    while offset < len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "little")
        values.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return np.array(values, dtype=object).reshape(shape)


def test_typed_contents_of_every_datatype_that_has_a_field_come_back_raw(served) -> None:
    _, port = served
    arrays = {datatype: sample(datatype) for datatype in CONTENTS_FIELD}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(typed_request("typed", arrays), timeout=60)
        assert len(response.outputs) == len(response.raw_output_contents) == len(arrays)
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
            datatype = output.name.removeprefix("out_")
            assert output.datatype == datatype
            got = decode_raw(datatype, list(output.shape), raw)
            assert got.tolist() == expected(datatype, arrays[datatype]).tolist(), datatype

        out_of_range = typed_request("typed", {**arrays, "INT8": np.array([[1, 300]])})
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(out_of_range, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[-128, 127]" in caught.value.details()
        fp16 = service_pb2.ModelInferRequest(model_name="mirror")
        fp16.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 1])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(fp16, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in caught.value.details()


def test_bad_requests_get_the_status_code_of_their_http_error(served, client) -> None:
    bad_shape = tg.InferInput("input", [2, 63], "FP32")
    bad_shape.set_data_from_numpy(np.zeros((2, 63), np.float32))
    assert status_of(lambda: client.infer("digits", [bad_shape])) == "StatusCode.INVALID_ARGUMENT"
    good = tg.InferInput("input", [1, 64], "FP32")
    good.set_data_from_numpy(np.zeros((1, 64), np.float32))
    assert status_of(lambda: client.infer("nope", [good])) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.infer("digits", [good], model_version="9")) == (
        "StatusCode.NOT_FOUND"
    )
    assert status_of(lambda: client.get_model_metadata("nope")) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.is_model_ready("nope")) == "StatusCode.NOT_FOUND"
    unknown_output = [tg.InferRequestedOutput("nope")]
    assert status_of(lambda: client.infer("digits", [good], outputs=unknown_output)) == (
        "StatusCode.INVALID_ARGUMENT"
    )
    # Without --model-control and without keys, nobody may load or unload models.
    assert status_of(lambda: client.unload_model("digits")) == "StatusCode.PERMISSION_DENIED"
    assert client.is_model_ready("digits") is True


def test_a_message_over_max_request_bytes_is_refused_and_the_server_stays_up(client) -> None:
    big = tg.InferInput("in_BYTES", [1, 1], "BYTES")
    big.set_data_from_numpy(np.array([[b"x" * (MAX_REQUEST_BYTES + 1)]], dtype=object))
    assert status_of(lambda: client.infer("mirror", [big])) == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live() is True


def test_two_hundred_concurrent_calls_all_succeed_and_are_counted(served, digits_data) -> None:
    server, port = served
    features, _ = digits_data
    clients = [tg.InferenceServerClient(f"127.0.0.1:{port}") for _ in range(8)]
    start = threading.Barrier(200)

    def call(i: int) -> np.ndarray:
        tensor = tg.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(features[i : i + 1])
        start.wait(timeout=60)
        # No deadline: the way most clients call, and the batcher must cope with it.
        return clients[i % 8].infer("digits", [tensor]).as_numpy("label")

    with ThreadPoolExecutor(200) as pool:
        labels = list(pool.map(call, range(200)))
    reference = grpc_client(port)
    batch = tg.InferInput("input", [200, 64], "FP32")
    batch.set_data_from_numpy(features[:200])
    want = reference.infer("digits", [batch]).as_numpy("label")
    np.testing.assert_array_equal(np.concatenate(labels), want)

    exposition = requests.get(f"{server.url}/metrics", timeout=10).text
    counted = [
        line
        for line in exposition.splitlines()
        if line.startswith("flaskserve_requests_total{")
        and 'protocol="grpc"' in line
        and 'model="digits"' in line
        and 'status="200"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 201


@pytest.fixture
def gated(tmp_path, digits_repo):
    keys_file = tmp_path / "keys.toml"
    keys = {
        "digits_only": add_key(keys_file, "digits_only", models=("digits",)),
        "other_only": add_key(keys_file, "other_only", models=("other",)),
        "limited": add_key(keys_file, "limited", rate=0.001, burst=1),
        "ops": add_key(keys_file, "ops", admin=True),
    }
    return keys_file, keys


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_keys_in_call_metadata_gate_the_rpcs_and_usage_is_metered(
    start_server, digits_repo, gated
) -> None:
    keys_file, keys = gated
    port = free_port()
    server = start_server(
        [str(digits_repo), "--workers", "2", "--grpc-port", str(port), "--auth", str(keys_file)],
        timeout=180,
    )
    server.wait_for_log("model digits version 1 is ready", count=2, timeout=180)
    client = grpc_client(port)  # ServerLive is open
    assert client.is_server_ready() and client.is_model_ready("digits")
    assert client.get_server_metadata().name == "flaskserve"
    tensor = tg.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 64), np.float32))

    def infer(headers=None):
        return lambda: client.infer("digits", [tensor], headers=headers)

    assert status_of(infer()) == "StatusCode.UNAUTHENTICATED"
    assert status_of(infer(bearer("fsk_not-a-key"))) == "StatusCode.UNAUTHENTICATED"
    assert status_of(infer(bearer(keys["other_only"]))) == "StatusCode.PERMISSION_DENIED"
    assert (
        status_of(lambda: client.get_model_metadata("digits", headers=bearer(keys["other_only"])))
        == "StatusCode.PERMISSION_DENIED"
    )
    for _ in range(3):
        assert infer(bearer(keys["digits_only"]))().as_numpy("label").shape == (2,)
    assert infer({"x-api-key": keys["ops"]})().as_numpy("label").shape == (2,)
    assert infer(bearer(keys["limited"]))().as_numpy("label").shape == (2,)
    assert status_of(infer(bearer(keys["limited"]))) == "StatusCode.RESOURCE_EXHAUSTED"

    index = lambda key: client.get_model_repository_index(headers=bearer(key))  # noqa: E731
    assert status_of(lambda: index(keys["digits_only"])) == "StatusCode.PERMISSION_DENIED"
    assert [model.name for model in index(keys["ops"]).models] == ["digits"]
    assert (
        status_of(lambda: client.load_model("digits", headers=bearer(keys["digits_only"])))
        == "StatusCode.PERMISSION_DENIED"
    )
    client.load_model("digits", headers=bearer(keys["ops"]))
    assert client.is_model_ready("digits")

    def digits_only_usage() -> dict | None:
        report = requests.get(
            f"{server.url}/v2/usage",
            headers={"Authorization": f"Bearer {keys['ops']}"},
            timeout=10,
        ).json()
        rows = [row for row in report["usage"] if row["key"] == "digits_only"]
        return rows[0] if rows and rows[0]["requests"] == 3 else None

    eventually(lambda: digits_only_usage() is not None, message="the gRPC call is metered")
    row = digits_only_usage()
    assert row["model"] == "digits" and row["items"] == 6 and row["failed"] == 0
    assert row["bytes_in"] > 3 * 2 * 64 * 4 and row["bytes_out"] > 0


def test_sigterm_lets_a_running_call_finish_and_refuses_new_ones(start_server, tmp_path) -> None:
    version = write_held(tmp_path, "gate")
    port = free_port()
    server = start_server(
        [str(tmp_path), "--workers", "2", "--grpc-port", str(port), "--graceful-timeout", "30"],
        timeout=180,
    )
    server.wait_for_log("model gate version 1 is ready", count=2, timeout=180)
    client = grpc_client(port)
    tensor = tg.InferInput("x", [3], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.infer, "gate", [tensor], client_timeout=60)
        eventually(lambda: calls_started(version) == 1, message="the slow call started")
        os.kill(server.process.pid, signal.SIGTERM)

        eventually(
            lambda: not answers_on_a_new_connection(port, timeout=2),
            message="new calls are refused",
        )
        assert not running.done()
        (version / "release").touch()
        result = running.result(timeout=60)
    assert result.as_numpy("y").tolist() == [2, 3, 4]
    assert server.process.wait(timeout=60) == 0


def test_sighup_serves_new_calls_from_the_reloaded_model_and_lets_a_running_call_finish(
    start_server, tmp_path
) -> None:
    version = write_held(tmp_path, "gate")
    port = free_port()
    server = start_server([str(tmp_path), "--workers", "2", "--grpc-port", str(port)],
                          timeout=180)
    server.wait_for_log("model gate version 1 is ready", count=2, timeout=180)
    client = grpc_client(port)
    tensor = tg.InferInput("x", [3], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    # Version 2 adds 2 and waits for nothing (the file it waits for is the one it writes).
    source = HELD_PY.replace("x + 1", "x + 2").replace('"release"', '"started"')
    write_python_model(tmp_path, "gate", HELD_TOML, source, version=2)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.infer, "gate", [tensor], client_timeout=60)
        eventually(lambda: calls_started(version) == 1, message="the slow call started")
        os.kill(server.process.pid, signal.SIGHUP)
        server.wait_for_log("Worker reloaded", count=2)
        fresh = grpc_client(port)
        for _ in range(4):
            assert fresh.infer("gate", [tensor]).as_numpy("y").tolist() == [3, 4, 5]
        fresh.close()
        assert not running.done()
        (version / "release").touch()
        result = running.result(timeout=60)
    assert result.as_numpy("y").tolist() == [2, 3, 4]
    assert "Spawning worker" not in server.log.split("reloading 2 workers in place", 1)[1]
    # The reloaded app's gRPC server is the one SIGTERM stops.
    os.kill(server.process.pid, signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert server.log.count("Worker exiting") == 2


BROKEN_PY = """\
class Broken:
    def predict(self, x):
        raise RuntimeError("secret /etc/credentials path")
"""


def test_a_model_failure_is_logged_with_the_calls_request_id_which_the_client_hears(
    start_server, tmp_path
) -> None:
    toml = HELD_TOML.replace("held:Held", "broken:Broken")
    write_python_model(tmp_path, "broken", toml, BROKEN_PY)
    port = free_port()
    server = start_server([str(tmp_path), "--workers", "1", "--grpc-port", str(port)])
    client = grpc_client(port)
    tensor = tg.InferInput("x", [3], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))

    with pytest.raises(InferenceServerException) as caught:
        client.infer("broken", [tensor], headers={"x-request-id": "grpc-req-42"})

    assert str(caught.value.status()) == "StatusCode.INTERNAL"
    details = caught.value.message()
    assert "RuntimeError" in details and "request id grpc-req-42" in details
    assert "secret" not in details
    eventually(
        lambda: "secret /etc/credentials path" in server.log, message="the failure is logged"
    )
    failed = [line for line in server.log.splitlines() if "secret /etc/credentials" in line]
    assert any("request grpc-req-42" in line for line in failed)
    assert "Traceback" in server.log


def test_the_committed_descriptor_is_the_compiled_inference_proto() -> None:
    pytest.importorskip("grpc_tools")
    from flaskserve.protocol.grpc.regenerate import compile_proto

    assert compile_proto() == SERIALIZED


def test_every_message_and_field_matches_the_published_protocol() -> None:
    """Wire compatibility: each message we declare exists in tritonclient's copy of the
    protocol with the same fields, numbers, types and labels."""
    theirs = service_pb2.DESCRIPTOR.pool
    ours = messages.POOL.FindFileByName("inference.proto")

    def fields(descriptor) -> set[tuple]:
        return {(f.name, f.number, f.type, f.is_repeated) for f in descriptor.fields}

    def compare(descriptor) -> None:
        other = theirs.FindMessageTypeByName(descriptor.full_name)
        assert fields(descriptor) == fields(other), descriptor.full_name
        for nested in descriptor.nested_types:
            compare(nested)

    assert ours.message_types_by_name
    for descriptor in ours.message_types_by_name.values():
        compare(descriptor)
    service = ours.services_by_name["GRPCInferenceService"]
    their_service = theirs.FindServiceByName("inference.GRPCInferenceService")
    for method in service.methods:
        other = their_service.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
