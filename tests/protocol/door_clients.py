"""A client per front door of one real server (`--auth`, gRPC on), for tests that send the same
request through every door and compare the answers.

Each door turns one described request (`Sent`: which model, what hostile input, which key) into
its own wire format and reads the refusal back as an `Answer`: the HTTP status (a gRPC code as the
HTTP status of the same refusal) and the message, after checking the door's error shape (`{"error":
"..."}`, OpenAI's `{"error": {"message", "type", "param", "code"}}`, a gRPC status with details).
Requests go out through raw `http.client` and raw gRPC stubs, which send what is written: no
client library tidies a shape or a header up on the way.

A module of its own (not a test module) so tests/protocol/test_front_doors.py and
tests/protocol/test_request_limits.py share it; each starts one server with `serve_every_door`.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from click.testing import CliRunner
from tritonclient.grpc import service_pb2, service_pb2_grpc

from flaskserve.cli import main as flaskserve_cli
from letters_model import LETTERS_PY, LETTERS_TOML
from python_models import ECHO_PY, ECHO_TOML, write_python_model
from servers import Server, free_port

MANY = 200_000
#: The server's `--max-request-bytes`: above every other request of the tables (200,000 strings
#: take about 2.2 MB), low enough that a body over it costs the table milliseconds.
MAX_REQUEST_BYTES = 3 << 20
STRINGS = [f"s{i}" for i in range(MANY)]
#: A generative Python model (its `predict` yields): what the text generation doors serve.
PARROT_PY = """\
class Parrot:
    def predict(self, text_input):
        yield text_input
"""
PARROT_TOML = 'runtime = "python"\nentrypoint = "parrot:Parrot"\n'
#: A model whose entry point does not exist: it stays UNAVAILABLE, every door answers 503.
BROKEN_TOML = 'runtime = "python"\nentrypoint = "gone:Gone"\n'


def add_key(path: Path, name: str, *options: str) -> str:
    """A new key in the keys file at `path`, made as an operator makes one: `flaskserve keys
    add NAME` (the key is the first line it prints)."""
    arguments = ["keys", "add", name, "--file", str(path), *options]
    result = CliRunner().invoke(flaskserve_cli, arguments)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[0]


class Served:
    """The server, a gRPC stub on it, and its keys: `key` (any model, not admin), `wide_key`
    (model `letters_wide` only), `admin_key`, and `spent_key`, whose rate allows one request
    per hour and whose one request `serve_every_door` has sent."""

    def __init__(self, server: Server, grpc_port: int, keys: dict[str, str]) -> None:
        self.server = server
        self.key = keys["anything"]
        self.wide_key = keys["wide_only"]
        self.admin_key = keys["admin"]
        self.spent_key = keys["spent"]
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", -1)]
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)


@contextmanager
def serve_every_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server with keys and gRPC on, serving `letters` (text in, a vector out: V2, V1,
    SageMaker, OpenAI embeddings, gRPC), `letters_wide` (the same, 10,000 rows per request),
    `pair` (FP32 [-1, 2]: CSV rows), `parrot` (generative: OpenAI chat and completions, the
    generate extension, gRPC streams) and `broken` (UNAVAILABLE: it fails to load)."""
    root = tmp_path_factory.mktemp("doors-repo")
    write_python_model(root, "letters", LETTERS_TOML, LETTERS_PY)
    wide = LETTERS_TOML.replace("[[inputs]]", "max_request_rows = 10000\n[[inputs]]", 1)
    write_python_model(root, "letters_wide", wide, LETTERS_PY)
    write_python_model(root, "pair", ECHO_TOML, ECHO_PY)
    write_python_model(root, "parrot", PARROT_TOML, PARROT_PY)
    write_python_model(root, "broken", BROKEN_TOML, "", module="other")
    path = tmp_path_factory.mktemp("doors-keys") / "keys.toml"
    keys = {
        "anything": add_key(path, "anything"),
        "wide_only": add_key(path, "wide_only", "--models", "letters_wide"),
        "admin": add_key(path, "admin", "--admin"),
        "spent": add_key(path, "spent", "--rate", str(1 / 3600), "--burst", "1"),
    }
    grpc_port = free_port()
    # Models load in name order; `parrot` ready: every model is (`broken` as UNAVAILABLE).
    server = Server(
        [
            *(str(root), "--workers", "1", "--grpc-port", str(grpc_port), "--auth", str(path)),
            *("--max-request-bytes", str(MAX_REQUEST_BYTES)),
        ],
        ready_path="/v2/models/parrot/ready",
    )
    served = Served(server, grpc_port, keys)
    try:
        assert v2_json(served, Sent("letters", FINE, "spent_key")) == Answer(200, "")
        yield served
    finally:
        served.channel.close()
        server.stop()


class Answer(NamedTuple):
    """A door's answer: the HTTP status (200 when served) and the refusal's message."""

    status: int
    message: str


# -- what is sent ----------------------------------------------------------------------------------

#: The inputs, as V2 would declare them to `letters` (one BYTES input, shape [-1]).
HUGE_DIMS, HUGE_ROWS, MANY_DIMS, NEGATIVE = "2**62-0-4", "2**62-rows", "65-dims", "negative-dim"
HUGE, WRONG_TYPE, EMPTY, FINE = "huge-count", "wrong-datatype", "no-inputs", "fine"
#: A sampling setting no generation takes (`max_tokens` 0), for the doors that generate.
BAD_SETTING = "max-tokens-0"
#: A fine request padded past `--max-request-bytes` (JSON and CSV with trailing whitespace, a
#: gRPC request with a long parameter): sent with its length declared, or (HTTP) chunked.
OVERSIZED, OVERSIZED_CHUNKED = "over-max-request-bytes", "chunked-over-max-request-bytes"
#: What each kind carries besides its size: an oversized request is a fine one.
PAYLOAD = {OVERSIZED: FINE, OVERSIZED_CHUNKED: FINE}
#: The shape of each; the first four only a door carrying a declared shape (V2, gRPC) can send.
SHAPES = {
    HUGE_DIMS: [2**62, 0, 4],
    HUGE_ROWS: [2**62],
    MANY_DIMS: [1] * 65,
    NEGATIVE: [-1],
    HUGE: [MANY],
    BAD_SETTING: [1],
    FINE: [1],
}


@dataclass(frozen=True)
class Sent:
    """One request, as the table describes it: which model, what input (one of the kinds
    above), and which key (the name of a `Served` key attribute; None: no key)."""

    model: str
    kind: str
    key: str | None


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def length_prefixed(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t.encode() for t in texts)


def texts_of(kind: str) -> list[str]:
    """The strings a tensor of `kind` carries (none for a shape with no or impossible rows)."""
    return {HUGE: STRINGS, FINE: ["a"], BAD_SETTING: ["a"], MANY_DIMS: ["a"]}.get(kind, [])


def v2_inputs(kind: str) -> list[dict[str, Any]]:
    """A V2 request's `inputs`: one tensor (`v2_tensor`), or none for EMPTY."""
    return [] if kind == EMPTY else [v2_tensor(kind)]


def v2_tensor(kind: str) -> dict[str, Any]:
    kind = PAYLOAD.get(kind, kind)
    if kind == WRONG_TYPE:
        return {"name": "sentence", "shape": [1], "datatype": "FP32", "data": [1.0]}
    return {"name": "sentence", "shape": SHAPES[kind], "datatype": "BYTES", "data": texts_of(kind)}


def instances(kind: str) -> Any:
    """V1 `instances` and OpenAI `input`: no shape is declared, the nesting is the shape."""
    kinds = {MANY_DIMS: nested("a", 66), HUGE: STRINGS, WRONG_TYPE: [1.5], EMPTY: [], FINE: ["a"]}
    return kinds[PAYLOAD.get(kind, kind)]


def grpc_request(model: str, kind: str, raw: bool = True, name: str = "sentence") -> Any:
    """A `ModelInferRequest` whose one BYTES input `name` is `kind` (no input for EMPTY)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    if kind == OVERSIZED:
        request.parameters["padding"].string_param = " " * MAX_REQUEST_BYTES
        kind = FINE
    if kind == EMPTY:
        return request
    tensor = request.inputs.add(name=name, datatype="BYTES")
    if kind == WRONG_TYPE:
        tensor.datatype = "FP32"
        tensor.shape.append(1)
        if raw:
            request.raw_input_contents.append(struct.pack("<f", 1.0))
        else:
            tensor.contents.fp32_contents.append(1.0)
        return request
    tensor.shape.extend(SHAPES[kind])
    if kind == BAD_SETTING:
        request.parameters["max_tokens"].int64_param = 0
    if raw:
        request.raw_input_contents.append(length_prefixed(texts_of(kind)))
    else:
        tensor.contents.bytes_contents.extend(t.encode() for t in texts_of(kind))
    return request


# -- reading answers -------------------------------------------------------------------------------


def auth(key: str | None, content_type: str = "application/json") -> dict[str, str]:
    headers = {"Content-Type": content_type}
    return {**headers, "Authorization": f"Bearer {key}"} if key else headers


def call(
    served: Served, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, Any]:
    """(status, parsed JSON body) of a raw HTTP request; every answer must be JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        return json_answer(connection.getresponse())
    finally:
        connection.close()


def json_answer(response: http.client.HTTPResponse) -> tuple[int, Any]:
    raw = response.read()
    assert response.headers["Content-Type"] == "application/json", (response.status, raw)
    return response.status, json.loads(raw)


def post(
    served: Served, path: str, body: bytes, headers: dict[str, str], kind: str = FINE
) -> tuple[int, Any]:
    """POST `body`, padded with trailing whitespace past `--max-request-bytes` for an
    OVERSIZED kind."""
    if kind in (OVERSIZED, OVERSIZED_CHUNKED):
        padded = body + b" " * (MAX_REQUEST_BYTES + 1 - len(body))
        return post_oversized(served, path, padded, headers, kind == OVERSIZED_CHUNKED)
    return call(served, "POST", path, body, headers)


def post_oversized(
    served: Served, path: str, body: bytes, headers: dict[str, str], chunked: bool
) -> tuple[int, Any]:
    """POST a body over `--max-request-bytes`. Chunked, all of it is sent (the server reads one
    byte past its limit). With its length declared, the head and the first 64 KiB go out and
    the answer is read then, as a client that reads an early answer does: the server answers
    without reading such a body, and a client that blocks sending the rest of it may wait
    for its own timeout (measured: 14 of 30 clients sending 1 MB stalled 4 s)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{served.server.port}", framing]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    step = 1 << 16
    if chunked:
        pieces = [body[start : start + step] for start in range(0, len(body), step)]
        data = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    else:
        data = body[:step]
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=60) as sock:
        sock.sendall(head + data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return json_answer(response)


def as_json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def http_error(status: int, body: Any) -> Answer:
    """The answer of a door whose refusals are `{"error": "..."}`."""
    if status == 200:
        return Answer(status, "")
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return Answer(status, body["error"])


def openai_error(status: int, body: Any) -> Answer:
    """The answer of an OpenAI door: `{"error": {"message", "type", "param", "code"}}` with the
    `type` OpenAI's clients map to their exception for that status."""
    if status == 200:
        return Answer(status, "")
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    kinds = {
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
        503: "server_error",
    }
    assert error["type"] == kinds.get(status, "invalid_request_error"), body
    return Answer(status, error["message"])


#: gRPC status code -> the HTTP status of the same refusal.
GRPC_AS_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def metadata(key: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")] if key else []


def grpc_answer(method: Callable[..., Any], request: Any, key: str | None) -> Answer:
    """The answer of a unary RPC; a code that is no refusal in `GRPC_AS_HTTP` fails the test."""
    try:
        method(request, metadata=metadata(key), timeout=60)
    except grpc.RpcError as error:
        assert error.code() in GRPC_AS_HTTP, (error.code(), error.details())
        assert error.details()
        return Answer(GRPC_AS_HTTP[error.code()], error.details())
    return Answer(200, "")


def stream_messages(served: Served, request: Any, key: str | None) -> list[Any]:
    """Every response of a `ModelStreamInfer` stream that sends `request` alone."""
    responses = served.stub.ModelStreamInfer(iter([request]), metadata=metadata(key), timeout=60)
    return list(responses)


# -- the doors: each sends `sent` in its own wire format and reads the answer back -----------------


def key_of(served: Served, sent: Sent) -> str | None:
    return getattr(served, sent.key) if sent.key else None


def v2_json(served: Served, sent: Sent) -> Answer:
    body = as_json({"inputs": v2_inputs(sent.kind)})
    path = f"/v2/models/{sent.model}/infer"
    return http_error(*post(served, path, body, auth(key_of(served, sent)), sent.kind))


def v2_binary(served: Served, sent: Sent) -> Answer:
    tensors, chunk = v2_inputs(sent.kind), b""
    for tensor in tensors:
        data = tensor.pop("data")
        chunk = struct.pack("<f", *data) if sent.kind == WRONG_TYPE else length_prefixed(data)
        tensor["parameters"] = {"binary_data_size": len(chunk)}
    head = as_json({"inputs": tensors})
    headers = {
        **auth(key_of(served, sent), "application/octet-stream"),
        "Inference-Header-Content-Length": str(len(head)),
    }
    path = f"/v2/models/{sent.model}/infer"
    return http_error(*post(served, path, head + chunk, headers, sent.kind))


def v1(served: Served, sent: Sent) -> Answer:
    body = as_json({"instances": instances(sent.kind)})
    path = f"/v1/models/{sent.model}:predict"
    return http_error(*post(served, path, body, auth(key_of(served, sent)), sent.kind))


def sagemaker_json(served: Served, sent: Sent) -> Answer:
    body = as_json({"instances": instances(sent.kind)})
    headers = {**auth(key_of(served, sent)), "X-Amzn-SageMaker-Target-Model": sent.model}
    return http_error(*post(served, "/invocations", body, headers, sent.kind))


#: CSV rows for `pair` (FP32 [-1, 2]): CSV carries rows of numbers, so its wrong datatype is a
#: cell that is not one.
CSV_ROWS = {HUGE: b"0.5,1\n" * MANY, WRONG_TYPE: b"0.5,one\n", EMPTY: b"\n", FINE: b"0.5,1\n"}


def sagemaker_csv(served: Served, sent: Sent) -> Answer:
    headers = {
        **auth(key_of(served, sent), "text/csv"),
        "X-Amzn-SageMaker-Target-Model": sent.model,
    }
    rows = CSV_ROWS[PAYLOAD.get(sent.kind, sent.kind)]
    return http_error(*post(served, "/invocations", rows, headers, sent.kind))


def openai_embeddings(served: Served, sent: Sent) -> Answer:
    body = as_json({"model": sent.model, "input": instances(sent.kind)})
    return openai_error(
        *post(served, "/v1/embeddings", body, auth(key_of(served, sent)), sent.kind)
    )


def sampling_of(kind: str) -> dict[str, Any]:
    """The sampling settings a generating door sends."""
    return {"max_tokens": 0} if kind == BAD_SETTING else {}


def openai_chat(served: Served, sent: Sent) -> Answer:
    content = 1.5 if sent.kind == WRONG_TYPE else "a"
    body = {
        "model": sent.model,
        "messages": [{"role": "user", "content": content}],
        **sampling_of(sent.kind),
    }
    path = "/v1/chat/completions"
    return openai_error(*post(served, path, as_json(body), auth(key_of(served, sent)), sent.kind))


def openai_completions(served: Served, sent: Sent) -> Answer:
    prompt = 1.5 if sent.kind == WRONG_TYPE else "a"
    body = {"model": sent.model, "prompt": prompt, **sampling_of(sent.kind)}
    path = "/v1/completions"
    return openai_error(*post(served, path, as_json(body), auth(key_of(served, sent)), sent.kind))


def grpc_raw(served: Served, sent: Sent) -> Answer:
    request = grpc_request(sent.model, sent.kind, raw=True)
    return grpc_answer(served.stub.ModelInfer, request, key_of(served, sent))


def grpc_typed(served: Served, sent: Sent) -> Answer:
    request = grpc_request(sent.model, sent.kind, raw=False)
    return grpc_answer(served.stub.ModelInfer, request, key_of(served, sent))


def grpc_stream(served: Served, sent: Sent, name: str = "sentence") -> Answer:
    """`ModelStreamInfer`: answers, or one response with an `error_message`, which carries no
    code. It counts as the code `ModelInfer` answers the same request with when it says the same
    words (else as 0: the stream and the unary call disagree), and as 400 when `ModelInfer`
    serves the request: a sampling setting, which only a generation reads."""
    request = grpc_request(sent.model, sent.kind, name=name)
    try:
        responses = stream_messages(served, request, key_of(served, sent))
    except grpc.RpcError as error:  # the library refused the message: the stream ends
        assert error.code() in GRPC_AS_HTTP, (error.code(), error.details())
        return Answer(GRPC_AS_HTTP[error.code()], error.details())
    refusal = responses[0].error_message
    if not refusal:
        assert all(not r.error_message and r.infer_response.outputs for r in responses), responses
        return Answer(200, "")
    assert len(responses) == 1, responses
    twin = grpc_answer(served.stub.ModelInfer, request, key_of(served, sent))
    if twin.status == 200:  # a sampling setting, which only a generation reads
        return Answer(400, refusal)
    return Answer(twin.status if twin.message == refusal else 0, refusal)


def grpc_stream_generate(served: Served, sent: Sent) -> Answer:
    """`ModelStreamInfer` to a generative model: its prompt is the input `text_input`."""
    return grpc_stream(served, sent, name="text_input")


def v2_generate(served: Served, sent: Sent) -> Answer:
    prompt = 1.5 if sent.kind == WRONG_TYPE else "a"
    body = as_json({"text_input": prompt, "parameters": sampling_of(sent.kind)})
    path = f"/v2/models/{sent.model}/generate"
    return http_error(*post(served, path, body, auth(key_of(served, sent)), sent.kind))


def v2_metadata(served: Served, sent: Sent) -> Answer:
    path = f"/v2/models/{sent.model}"
    return http_error(*call(served, "GET", path, None, auth(key_of(served, sent))))


def grpc_metadata(served: Served, sent: Sent) -> Answer:
    request = service_pb2.ModelMetadataRequest(name=sent.model)
    return grpc_answer(served.stub.ModelMetadata, request, key_of(served, sent))


def v2_statistics(served: Served, sent: Sent) -> Answer:
    path = f"/v2/models/{sent.model}/stats"
    return http_error(*call(served, "GET", path, None, auth(key_of(served, sent))))


def grpc_statistics(served: Served, sent: Sent) -> Answer:
    request = service_pb2.ModelStatisticsRequest(name=sent.model)
    return grpc_answer(served.stub.ModelStatistics, request, key_of(served, sent))


#: A door: sends what `Sent` describes, answers what the server said.
Door = Callable[[Served, Sent], Answer]
