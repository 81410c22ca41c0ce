"""gRPC under overload and at stop: an overloaded worker refuses ModelInfer calls at once with
UNAVAILABLE (HTTP's 503) instead of queueing them, answers health meanwhile, and serves again
once the load is gone; SIGTERM stops an idle server with `--grpc-port` as one without it.

A stop is prompt when it does not wait out the graceful timeout: the tests set that timeout far
above the generous bound they wait for the exit (on a loaded machine a prompt stop took over 5
s), and read from the log that every worker ended by itself, none killed."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from test_grpc import answers_on_a_new_connection, grpc_client
from tritonclient.utils import InferenceServerException

from python_models import calls_started, write_held
from servers import free_port
from waiting import eventually


def infer(port: int) -> list[int] | str:
    """One ModelInfer on a fresh connection: the answer, or the status code it failed with."""
    client = tg.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = tg.InferInput("x", [2], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    try:
        return client.infer("slow", [tensor], client_timeout=120).as_numpy("y").tolist()
    except InferenceServerException as exc:
        return str(exc.status())
    finally:
        client.close()


def test_an_overloaded_worker_refuses_grpc_inference_at_once_and_keeps_serving(
    start_server, tmp_path: Path
) -> None:
    version = write_held(tmp_path, "slow")
    port = free_port()
    server = start_server(
        [str(tmp_path), "--workers", "1", "--threads", "2", "--max-queue-ms", "200",
         "--grpc-port", str(port)],
        timeout=180,
    )
    server.wait_for_log("model slow version 1 is ready", timeout=180)
    eventually(lambda: answers_on_a_new_connection(port), message="the worker serves gRPC")
    with ThreadPoolExecutor(8) as pool:
        held = [pool.submit(infer, port) for _ in range(2)]
        eventually(lambda: calls_started(version) == 2, message="both threads run a slow call")
        excess = [pool.submit(infer, port) for _ in range(6)]
        # Refused while the two slow calls still hold the worker's threads: not queued.
        eventually(lambda: all(call.done() for call in excess),
                   message="the calls beyond --threads are answered while the slow ones run")
        assert [call.result() for call in excess] == ["StatusCode.UNAVAILABLE"] * 6
        assert not any(call.done() for call in held)
        assert answers_on_a_new_connection(port)  # health answers meanwhile
        (version / "release").touch()
        assert [call.result(timeout=60) for call in held] == [[2, 3], [2, 3]]
    assert infer(port) == [2, 3]
    assert calls_started(version) == 3  # the refused calls never reached the model
    assert "Traceback" not in server.log


#: The graceful timeout of the stop tests, and the bound, far below it, on their exit.
GRACEFUL_S, PROMPT_S = 600, 60


@pytest.mark.timeout(300)  # a server started and stopped on a loaded machine
@pytest.mark.parametrize("grpc_port", [True, False], ids=["with-grpc", "without-grpc"])
def test_sigterm_stops_an_idle_server_promptly_with_or_without_grpc(
    start_server, digits_repo: Path, grpc_port: bool
) -> None:
    port = free_port()
    args = [str(digits_repo), "--workers", "2", "--graceful-timeout", str(GRACEFUL_S)]
    server = start_server(args + (["--grpc-port", str(port)] if grpc_port else []), timeout=180)
    server.wait_for_log("model digits version 1 is ready", count=2, timeout=180)
    client = None
    if grpc_port:
        client = grpc_client(port)
        tensor = tg.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
        for _ in range(4):  # calls answered; the connection stays open, idle
            client.infer("digits", [tensor])
    os.kill(server.process.pid, signal.SIGTERM)
    # Far below the graceful timeout a stop waits for calls that still run: none do.
    assert server.process.wait(timeout=PROMPT_S) == 0
    assert server.log.count("Worker exiting") == 2
    assert "Killing worker" not in server.log
    if client is not None:
        client.close()
