"""`--max-stream-bytes` and `--max-stream-seconds` on a real server: a stream that reaches either
is stopped (its generation closed, its slot freed), logged, and ends with an error in its front
door's shape; clients that read nothing hold a bounded share of a worker's memory.

Granian queues what a worker streams without a bound, so without these limits a model that
yields without end to a client that reads nothing grows the worker until the client leaves.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import openai
import orjson
import pytest
import requests
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from python_models import ECHO_PY, python_toml, write_python_model, write_streamer
from servers import Server, free_port
from waiting import eventually

pytestmark = pytest.mark.e2e

THREADS = 2
CAP = 1 << 20
SECONDS = 2
#: What one worker may grow by while THREADS + 1 clients read nothing: each stream leaves at
#: most CAP in Granian's channel, so (THREADS + 1) x CAP, with room for the allocator's slack
#: and the pieces in flight. Without the limit the same clients grow it by GiBs within seconds.
GROWTH_MIB = 32 + 8 * (THREADS + 1) * CAP // (1 << 20)

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`echo` (any width), and the streamers `flood` and `ticker`."""
    root = tmp_path_factory.mktemp("streams")
    echo = python_toml("echo:Echo", {"x": ("FP32", [-1, -1])}, {"y": ("FP32", [-1, -1])})
    write_python_model(root, "echo", echo, ECHO_PY)
    for name, cls in (("flood", "Flood"), ("ticker", "Endless")):
        write_streamer(root, name, cls)
    return root


@pytest.fixture(scope="module")
def served(repo: Path) -> Iterator[tuple[Server, int]]:
    """A one-worker server with small stream limits, gRPC on; and its gRPC port."""
    root = repo
    grpc_port = free_port()
    server = Server(
        [
            str(root), "--workers", "1", "--threads", str(THREADS), "--max-queue-ms", "0",
            "--max-stream-bytes", str(CAP), "--max-stream-seconds", str(SECONDS),
            "--grpc-port", str(grpc_port),
        ]
    )
    yield server, grpc_port
    server.stop()


@pytest.fixture
def server(served: tuple[Server, int]) -> Server:
    return served[0]


def _rss_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:", 1)[1].split()[0]) // 1024


def _completion(marker: Path) -> bytes:
    payload = orjson.dumps({"model": "flood", "prompt": str(marker), "stream": True})
    return (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


def _events(response: requests.Response, most: int) -> list[dict]:
    """The events of a streamed `response`, failing once it sent more than `most` bytes (a
    stream that is not stopped would not end)."""
    events, received = [], 0
    for line in response.iter_lines():
        received += len(line) + 1
        assert received <= most, f"the stream went on past {most} bytes"
        if line.startswith(b"data: "):
            events.append(orjson.loads(line[6:]))
    return events


def test_clients_that_read_nothing_hold_a_bounded_share_of_a_worker(
    server: Server, tmp_path: Path
) -> None:
    (worker,) = server.worker_pids()
    with requests.post(  # a first stream, so that what it allocates once is not counted
        server.url + "/v1/completions",
        json={"model": "flood", "prompt": str(tmp_path / "warm"), "stream": True},
        stream=True,
        timeout=60,
    ) as warm:
        assert "--max-stream-bytes" in _events(warm, CAP + 4096)[-1]["error"]["message"]
    stopped = server.log.count("stopped at --max-stream-bytes")
    booted = _rss_mib(worker)
    markers = [tmp_path / f"stalled-{i}" for i in range(THREADS + 1)]
    stalled = []
    try:
        for marker in markers:  # one more than the slots: the last waits for a freed one
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(_completion(marker))
            stalled.append(sock)

        def every_stream_ended() -> bool:
            grown = _rss_mib(worker) - booted
            assert grown < GROWTH_MIB, f"the worker grew by {grown} MiB"
            return all(marker.exists() for marker in markers)

        eventually(every_stream_ended, timeout=60, message="every stalled stream was stopped")
        assert _rss_mib(worker) - booted < GROWTH_MIB
        # Their slots are free: a request that needs one, and readiness, answer.
        answer = requests.post(
            server.url + "/v2/models/echo/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
            timeout=30,
        )
        assert answer.status_code == 200
        assert requests.get(server.url + "/v2/health/ready", timeout=30).status_code == 200
        server.wait_for_log(
            "stream of POST /v1/completions stopped at --max-stream-bytes", stopped + THREADS + 1
        )
    finally:
        for sock in stalled:
            sock.close()


def test_the_openai_client_raises_the_limit_reached(server: Server, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(model="flood", prompt=str(tmp_path / "m"), stream=True)
    with pytest.raises(openai.APIError) as raised:
        for count, _ in enumerate(stream):
            assert count <= CAP // 65536, "the stream went on past the limit"
    assert "--max-stream-bytes" in raised.value.message
    assert f"at most {CAP} bytes" in raised.value.message
    assert raised.value.code == "max_stream_bytes"
    eventually((tmp_path / "m").exists, message="the generation was closed")


def test_a_generate_stream_ends_with_an_error_event_at_the_limit(
    server: Server, tmp_path: Path
) -> None:
    with requests.post(
        server.url + "/v2/models/flood/generate_stream",
        json={"text_input": str(tmp_path / "m")},
        stream=True,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        events = _events(response, CAP + 4096)  # the pieces up to the cap, and the error
    assert all(event["model_name"] == "flood" for event in events[:-1])
    assert set(events[-1]) == {"error"} and "--max-stream-bytes" in events[-1]["error"]


def test_a_stream_past_its_time_is_stopped_with_an_error_event(
    server: Server, tmp_path: Path
) -> None:
    marker = tmp_path / "m"
    with requests.post(
        server.url + "/v2/models/ticker/generate_stream",
        json={"text_input": str(marker)},
        stream=True,
        timeout=60,
    ) as response:
        events = _events(response, 1 << 16)  # about 70 bytes a tick, 50 ticks a second
    assert events[0]["text_output"] == "tick "
    assert "--max-stream-seconds" in events[-1]["error"]
    assert marker.exists()
    server.wait_for_log("stream of POST /v2/models/ticker/generate_stream stopped at "
                        "--max-stream-seconds")


def test_a_response_with_a_length_is_never_cut(server: Server) -> None:
    wide = CAP // 3  # a JSON answer well over the cap ("1.5," per value)
    answer = requests.post(
        server.url + "/v2/models/echo/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, wide],
                          "data": [1.5] * wide}]},
        timeout=60,
    )
    assert answer.status_code == 200 and len(answer.content) > CAP
    assert answer.json()["outputs"][0]["data"] == [1.5] * wide


def _prompt(text: str) -> tg.InferInput:
    prompt = tg.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return prompt


def test_a_grpc_generation_past_its_time_ends_with_an_error_response(
    served: tuple[Server, int], tmp_path: Path
) -> None:
    server, port = served
    client = tg.InferenceServerClient(f"127.0.0.1:{port}")
    marker = tmp_path / "m"
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("ticker", [_prompt(str(marker))], request_id="r1")
        pieces = 0
        while True:
            result, error = results.get(timeout=60)
            if error is not None:
                break
            pieces += 1
            assert pieces < 5000, "the generation went on past its time"  # 50 pieces a second
        assert pieces >= 1 and isinstance(error, InferenceServerException)
        assert "--max-stream-seconds" in str(error)
        assert marker.exists()
        # The stream goes on: the next request is served.
        client.async_stream_infer("echo", [_echo_input()], request_id="r2")
        result, error = results.get(timeout=60)
        assert error is None and result.as_numpy("y").tolist() == [[1.0, 2.0]]
    finally:
        client.stop_stream()
        client.close()
    server.wait_for_log("stream of ModelStreamInfer ticker stopped at --max-stream-seconds")


def _echo_input() -> tg.InferInput:
    x = tg.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[1.0, 2.0]], dtype=np.float32))
    return x


def test_a_grpc_client_that_reads_nothing_has_its_call_cancelled_at_the_time_limit(
    start_server, repo: Path, tmp_path: Path
) -> None:
    # No bytes limit: the client's flow-control window fills first and the handler thread
    # waits in a send, where no check between pieces runs; and the call has no deadline.
    port = free_port()
    server = start_server(
        [str(repo), "--workers", "1", "--threads", "1", "--grpc-port", str(port),
         "--max-stream-bytes", "0", "--max-stream-seconds", str(SECONDS)]
    )
    marker = tmp_path / "m"
    request = service_pb2.ModelInferRequest(model_name="flood", id="r1")
    prompt = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    prompt.contents.bytes_contents.append(str(marker).encode())
    hold = threading.Event()

    def requests_then_wait() -> Iterator[service_pb2.ModelInferRequest]:
        yield request
        hold.wait(60)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(requests_then_wait())  # never read
        try:
            eventually(marker.exists, timeout=60, message="the stalled generation was closed")
            server.wait_for_log("stream of ModelStreamInfer flood cancelled at "
                                "--max-stream-seconds")
            # Its thread and its slot (the only one) are free.
            client = tg.InferenceServerClient(f"127.0.0.1:{port}")
            try:
                answer = client.infer("echo", [_echo_input()])
            finally:
                client.close()
            assert answer.as_numpy("y").tolist() == [[1.0, 2.0]]
        finally:
            hold.set()
            call.cancel()
