"""gRPC under overload and at stop: an overloaded worker refuses ModelInfer calls at once with
UNAVAILABLE (HTTP's 503) instead of queueing them, answers health meanwhile, and serves again
once the load is gone; SIGTERM stops an idle server with `--grpc-port` as one without it."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from servers import free_port
from waiting import eventually

# Each call notes its start in `started`, then waits for `release` (at most 60 s).
SLOW_PY = """\
import time
from pathlib import Path

HERE = Path(__file__).parent


class Slow:
    def predict(self, x):
        with open(HERE / "started", "a") as out:
            out.write("call\\n")
        deadline = time.monotonic() + 60
        while not (HERE / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"y": x + 1}
"""
SLOW_TOML = """\
runtime = "python"
entrypoint = "slow:Slow"
[[inputs]]
name = "x"
datatype = "INT32"
shape = [-1]
[[outputs]]
name = "y"
datatype = "INT32"
shape = [-1]
"""


def slow_model(root: Path) -> Path:
    version = root / "slow" / "1"
    version.mkdir(parents=True)
    (root / "slow" / "model.toml").write_text(SLOW_TOML)
    (version / "slow.py").write_text(SLOW_PY)
    return version


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


def live(port: int) -> bool:
    client = tg.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        return bool(client.is_server_live(client_timeout=5))
    except InferenceServerException:
        return False
    finally:
        client.close()


def started(version: Path) -> int:
    path = version / "started"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_an_overloaded_worker_refuses_grpc_inference_at_once_and_keeps_serving(
    start_server, tmp_path: Path
) -> None:
    version = slow_model(tmp_path)
    port = free_port()
    server = start_server(
        [str(tmp_path), "--workers", "1", "--threads", "2", "--max-queue-ms", "200",
         "--grpc-port", str(port)],
        timeout=180,
    )
    server.wait_for_log("model slow version 1 is ready", timeout=180)
    eventually(lambda: live(port), message="the worker serves gRPC")
    with ThreadPoolExecutor(8) as pool:
        held = [pool.submit(infer, port) for _ in range(2)]
        eventually(lambda: started(version) == 2, message="both threads run a slow call")
        excess = [pool.submit(infer, port) for _ in range(6)]
        # Refused while the two slow calls still hold the worker's threads: not queued.
        eventually(lambda: all(call.done() for call in excess),
                   message="the calls beyond --threads are answered while the slow ones run")
        assert [call.result() for call in excess] == ["StatusCode.UNAVAILABLE"] * 6
        assert not any(call.done() for call in held)
        assert live(port)  # health answers meanwhile
        (version / "release").touch()
        assert [call.result(timeout=60) for call in held] == [[2, 3], [2, 3]]
    assert infer(port) == [2, 3]
    assert started(version) == 3  # the refused calls never reached the model
    assert "Traceback" not in server.log


@pytest.mark.parametrize("grpc_port", [True, False], ids=["with-grpc", "without-grpc"])
def test_sigterm_stops_an_idle_server_promptly_with_or_without_grpc(
    start_server, digits_repo: Path, grpc_port: bool
) -> None:
    port = free_port()
    args = [str(digits_repo), "--workers", "2", "--graceful-timeout", "30"]
    server = start_server(args + (["--grpc-port", str(port)] if grpc_port else []), timeout=180)
    server.wait_for_log("model digits version 1 is ready", count=2, timeout=180)
    client = None
    if grpc_port:
        client = tg.InferenceServerClient(f"127.0.0.1:{port}")
        eventually(lambda: client.is_server_live(), message="a worker serves gRPC")
        tensor = tg.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
        for _ in range(4):  # calls answered; the connection stays open, idle
            client.infer("digits", [tensor])
    os.kill(server.process.pid, signal.SIGTERM)
    # Far below the 30 s graceful timeout a stop waits for calls that still run: none do.
    assert server.process.wait(timeout=5) == 0
    assert server.log.count("Worker exiting") == 2
    if client is not None:
        client.close()
