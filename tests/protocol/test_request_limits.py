"""Bounded work per request, on every front door, against one real server (`--auth`, gRPC on).

A request is admitted on what it declares (V2 and gRPC `shape`, the binary header,
`len(instances)`, the CSV line count, `len(input)`) before its payload is decoded, by one check
all front doors share. So 200,000 short strings are refused with 400 (gRPC INVALID_ARGUMENT),
naming the limit, whichever door they come through, the worker's memory barely moves, and the
same hostile input gets the same kind of refusal everywhere, each in its own wire format.
"""

from __future__ import annotations

import http.client
import json
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from flaskserve.gate.keys import add_key
from letters_model import LETTERS_PY, LETTERS_TOML
from servers import Server, free_port

#: Servers boot slowly on a shared machine.
pytestmark = pytest.mark.timeout(300)

MANY = 200_000
STRINGS = [f"s{i}" for i in range(MANY)]
LIMIT = 4096  # the default of --max-batch-rows
PAIR_TOML = """\
runtime = "python"
entrypoint = "pair:Pair"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 2]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 2]
"""
PAIR_PY = """\
class Pair:
    def predict(self, x):
        return {"y": x}
"""


def write_model(root: Path, name: str, toml: str, module: str, source: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "model.toml").write_text(toml)
    (root / name / "1" / f"{module}.py").write_text(source)


class Served:
    def __init__(self, server: Server, grpc_port: int, key: str, pair_key: str) -> None:
        self.server = server
        self.key = key
        self.pair_key = pair_key
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", -1)]
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("limits-repo")
    write_model(root, "letters", LETTERS_TOML, "letters", LETTERS_PY)
    # The same model whose model.toml raises the server's row limit.
    wide = LETTERS_TOML.replace("[[inputs]]", "max_request_rows = 10000\n[[inputs]]", 1)
    write_model(root, "letters_wide", wide, "letters", LETTERS_PY)
    write_model(root, "pair", PAIR_TOML, "pair", PAIR_PY)
    keys = tmp_path_factory.mktemp("limits-keys") / "keys.toml"
    key = add_key(keys, "anything")
    pair_key = add_key(keys, "pair_only", models=("pair",))
    grpc_port = free_port()
    server = Server(
        [str(root), "--workers", "1", "--grpc-port", str(grpc_port), "--auth", str(keys)],
        ready_path="/v2/health/ready",
    )
    running = Served(server, grpc_port, key, pair_key)
    yield running
    running.channel.close()
    server.stop()


# -- the wire formats -----------------------------------------------------------------------------


def post(served: Served, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """(status, parsed JSON body) of a raw HTTP POST."""
    connection = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        assert response.headers["Content-Type"] == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def as_json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def length_prefixed(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t.encode() for t in texts)


#: What each hostile input is, per front door: V2 tensors, V1 instances, OpenAI input.
ODD, HUGE, WRONG_TYPE, FINE = "odd-shape", "huge-count", "wrong-datatype", "fine"


def v2_tensor(kind: str) -> dict[str, Any]:
    if kind == ODD:
        return {"name": "sentence", "shape": [1] * 65, "datatype": "BYTES", "data": ["a"]}
    if kind == HUGE:
        return {"name": "sentence", "shape": [MANY], "datatype": "BYTES", "data": STRINGS}
    if kind == WRONG_TYPE:
        return {"name": "sentence", "shape": [1], "datatype": "FP32", "data": [1.0]}
    return {"name": "sentence", "shape": [1], "datatype": "BYTES", "data": ["a"]}


def v1_instances(kind: str) -> Any:
    return {ODD: nested("a", 66), HUGE: STRINGS, WRONG_TYPE: [1.5], FINE: ["a"]}[kind]


def openai_input(kind: str) -> Any:
    """OpenAI's `input` has no shape: its odd shape is text nested in lists."""
    return {ODD: nested("a", 66), HUGE: STRINGS, WRONG_TYPE: [1.5], FINE: ["a"]}[kind]


def http_error(status: int, body: Any) -> tuple[int, str]:
    """(status, message) of a `{"error": "..."}` refusal."""
    assert isinstance(body["error"], str) and body["error"], body
    return status, body["error"]


def openai_error(status: int, body: Any) -> tuple[int, str]:
    """(status, message) of an OpenAI `{"error": {"message", "type", "param", "code"}}`."""
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status in (400, 404) else
                             {401: "authentication_error", 403: "permission_error"}[status])
    return status, error["message"]


#: gRPC status code -> the HTTP status of the same refusal.
GRPC_AS_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
}


def grpc_request(model: str, kind: str, raw: bool = True) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="sentence", datatype="BYTES")
    texts = {ODD: ["a"], HUGE: STRINGS, WRONG_TYPE: [], FINE: ["a"]}[kind]
    tensor.shape.extend({ODD: [1] * 65, HUGE: [MANY], WRONG_TYPE: [1], FINE: [1]}[kind])
    if kind == WRONG_TYPE:
        tensor.datatype = "FP32"
        request.raw_input_contents.append(struct.pack("<f", 1.0))
    elif raw:
        request.raw_input_contents.append(length_prefixed(texts))
    else:
        tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return request


def grpc_call(served: Served, request: Any, key: str | None) -> tuple[int, str]:
    """(HTTP status of the gRPC refusal, its details); 200 when the call succeeds."""
    metadata = [("authorization", f"Bearer {key}")] if key else []
    try:
        served.stub.ModelInfer(request, metadata=metadata, timeout=60)
    except grpc.RpcError as error:
        assert error.code() in GRPC_AS_HTTP, (error.code(), error.details())
        assert error.details()
        return GRPC_AS_HTTP[error.code()], error.details()
    return 200, ""


Door = Callable[[Served, str, str, "str | None"], tuple[int, str]]


def v2_door(served: Served, model: str, kind: str, key: str | None) -> tuple[int, str]:
    body = as_json({"inputs": [v2_tensor(kind)]})
    return http_error(*post(served, f"/v2/models/{model}/infer", body, auth(key)))


def v1_door(served: Served, model: str, kind: str, key: str | None) -> tuple[int, str]:
    body = as_json({"instances": v1_instances(kind)})
    return http_error(*post(served, f"/v1/models/{model}:predict", body, auth(key)))


def sagemaker_door(served: Served, model: str, kind: str, key: str | None) -> tuple[int, str]:
    body = as_json({"instances": v1_instances(kind)})
    headers = {**auth(key), "X-Amzn-SageMaker-Target-Model": model}
    return http_error(*post(served, "/invocations", body, headers))


def openai_door(served: Served, model: str, kind: str, key: str | None) -> tuple[int, str]:
    body = as_json({"model": model, "input": openai_input(kind)})
    return openai_error(*post(served, "/v1/embeddings", body, auth(key)))


def grpc_door(served: Served, model: str, kind: str, key: str | None) -> tuple[int, str]:
    return grpc_call(served, grpc_request(model, kind), key)


def auth(key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    return {**headers, "Authorization": f"Bearer {key}"} if key else headers


DOORS: dict[str, Door] = {
    "v2": v2_door,
    "v1": v1_door,
    "sagemaker": sagemaker_door,
    "openai": openai_door,
    "grpc": grpc_door,
}

#: (case, model, what is sent, which key, the HTTP status every door answers, words in it;
#: OpenAI, which has no shapes, says its words about the odd shape below)
HOSTILE = [
    ("odd-shape", "letters", ODD, "key", 400, "64"),
    ("huge-count", "letters", HUGE, "key", 400, f"has {MANY} rows"),
    ("wrong-datatype", "letters", WRONG_TYPE, "key", 400, ""),
    ("unknown-model", "nope", FINE, "key", 404, "nope"),
    ("no-key", "letters", FINE, None, 401, "key"),
    ("key-for-another-model", "letters", FINE, "pair_key", 403, "letters"),
]


@pytest.mark.parametrize("door", list(DOORS))
@pytest.mark.parametrize(
    ("model", "kind", "key", "status", "words"), [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_every_front_door_refuses_the_same_hostile_input_the_same_way_in_its_own_format(
    served, door, model, kind, key, status, words
) -> None:
    sent_key = getattr(served, key) if key else None
    got, message = DOORS[door](served, model, kind, sent_key)
    assert got == status, message
    assert (words if (door, kind) != ("openai", ODD) else "token ids") in message
    assert "Traceback" not in message


# -- 200,000 strings cost the worker nothing ------------------------------------------------------


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def many_strings(served: Served, door: str) -> tuple[int, str]:
    """Send the 200,000 short strings through `door`; (status, message) of the answer."""
    key = served.key
    if door == "v2-binary":
        chunk = length_prefixed(STRINGS)
        head = as_json({"inputs": [{"name": "sentence", "shape": [MANY], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": len(chunk)}}]})
        headers = {**auth(key), "Inference-Header-Content-Length": str(len(head)),
                   "Content-Type": "application/octet-stream"}
        return http_error(*post(served, "/v2/models/letters/infer", head + chunk, headers))
    if door == "sagemaker-csv":
        headers = {**auth(key), "Content-Type": "text/csv",
                   "X-Amzn-SageMaker-Target-Model": "pair"}
        return http_error(*post(served, "/invocations", b"0.5,1\n" * MANY, headers))
    if door in ("grpc-raw", "grpc-typed"):
        return grpc_call(served, grpc_request("letters", HUGE, raw=door == "grpc-raw"), key)
    name = {"v2-json": "v2", "sagemaker-json": "sagemaker"}.get(door, door)
    return DOORS[name](served, "letters", HUGE, key)


def answers(served: Served) -> None:
    status, body = post(
        served, "/v2/models/letters/infer", as_json({"inputs": [v2_tensor(FINE)]}),
        auth(served.key),
    )
    assert status == 200, body


@pytest.mark.parametrize(
    "door",
    ["openai", "v2-json", "v2-binary", "v1", "sagemaker-json", "sagemaker-csv", "grpc-raw",
     "grpc-typed"],
)
def test_200000_short_strings_are_refused_before_decoding_and_the_worker_stays_small(
    served, door
) -> None:
    (worker,) = served.server.worker_pids()
    answers(served)
    before = rss_kib(worker)
    status, message = many_strings(served, door)
    grown_mib = (rss_kib(worker) - before) / 1024
    assert status == 400, message
    assert f"has {MANY} rows" in message and f"at most {LIMIT}" in message
    assert "--max-batch-rows" in message and "max_request_rows" in message
    assert grown_mib < 100, f"the worker grew by {grown_mib:.0f} MiB"
    answers(served)


# -- the limit itself -----------------------------------------------------------------------------


def embeddings(served: Served, model: str, count: int) -> tuple[int, Any]:
    body = as_json({"model": model, "input": STRINGS[:count]})
    return post(served, "/v1/embeddings", body, auth(served.key))


def test_a_request_at_the_row_limit_is_served_and_one_row_more_is_not(served) -> None:
    status, body = embeddings(served, "letters", LIMIT)
    assert status == 200, body
    assert len(body["data"]) == LIMIT
    status, body = embeddings(served, "letters", LIMIT + 1)
    assert status == 400
    assert body["error"]["param"] == "input"
    assert f"has {LIMIT + 1} rows" in body["error"]["message"]


def test_a_model_toml_that_raises_the_limit_lets_a_larger_request_through(served) -> None:
    status, body = embeddings(served, "letters_wide", 10_000)
    assert status == 200, body
    assert len(body["data"]) == 10_000
    status, body = embeddings(served, "letters_wide", 10_001)
    assert status == 400 and "at most 10000" in body["error"]["message"]


# -- shapes no array can take, over gRPC ----------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ([2**62, 0, 4], "larger than any array"),
        ([1] * 65, "at most 64"),
        ([-1, 2], "non-negative"),
        ([2**62, 2], "larger than any array"),
    ],
    ids=["2**62-0-4", "65-dims", "negative-dim", "2**62-rows"],
)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_grpc_refuses_shapes_no_array_can_take_as_invalid_argument(
    served, shape, words, raw
) -> None:
    request = service_pb2.ModelInferRequest(model_name="pair")
    tensor = request.inputs.add(name="x", datatype="FP32")
    tensor.shape.extend(shape)
    if raw:
        request.raw_input_contents.append(b"")
    with pytest.raises(grpc.RpcError) as caught:
        served.stub.ModelInfer(
            request, metadata=[("authorization", f"Bearer {served.key}")], timeout=60
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert words in caught.value.details()
    assert "'x'" in caught.value.details()
