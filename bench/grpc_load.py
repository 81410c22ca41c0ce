"""A closed-loop gRPC load driver for `bench/run.py`: wrk's role, for the V2 gRPC front door.

    python bench/grpc_load.py 127.0.0.1:8001 digits request.json --conc 32 --duration 10

`conc` threads each own one HTTP/2 connection (a channel with its own subchannel pool, as wrk
opens one TCP connection per `-c`, so SO_REUSEPORT spreads them over the server's workers) and
send `ModelInfer` back to back for `duration` seconds with the stub of `tritonclient.grpc`. The
request is built once, as wrk sends one body: what is timed is the call (serialise, send, wait,
parse the reply), not building tensors in Python. Prints one `BENCHJSON {...}` line with wrk's
summary keys, plus the driver's own CPU seconds, so run.py can tell the server's share of the
machine from the driver's. A Python driver costs more CPU per call than wrk: run.py reports it.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

#: gRPC status -> the wrk error bucket it is counted in.
ERROR_BUCKETS = {
    grpc.StatusCode.UNAVAILABLE: "err_connect",
    grpc.StatusCode.DEADLINE_EXCEEDED: "err_timeout",
}
CALL_TIMEOUT_S = 10.0  # as wrk's --timeout 10s


def build_request(model: str, spec: dict[str, Any]) -> Any:
    """One ModelInferRequest from `{"name", "datatype", "shape", "data"}`, raw contents."""
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
    array = np.asarray(spec["data"], dtype=dtypes[spec["datatype"]]).reshape(spec["shape"])
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = spec["name"], spec["datatype"]
    tensor.shape.extend(array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request


def channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def drive(target: str, request: Any, conc: int, duration: float) -> dict[str, Any]:
    """`conc` connections calling ModelInfer back to back for `duration` seconds."""
    channels = [channel(target) for _ in range(conc)]
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
    for stub in stubs:  # connect first: the clock starts with every connection open
        stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=30, wait_for_ready=True)
    latencies: list[list[float]] = [[] for _ in range(conc)]
    errors: dict[str, int] = {
        "err_connect": 0,
        "err_read": 0,
        "err_write": 0,
        "err_status": 0,
        "err_timeout": 0,
    }
    lock = threading.Lock()
    start = threading.Barrier(conc + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        call, mine = stubs[index].ModelInfer, latencies[index]
        start.wait()
        deadline = stop_at[0]
        clock = time.perf_counter
        while True:
            began = clock()
            if began >= deadline:
                return
            try:
                call(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                bucket = ERROR_BUCKETS.get(exc.code(), "err_status")
                with lock:
                    errors[bucket] += 1
                continue
            mine.append(clock() - began)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conc)]
    for thread in threads:
        thread.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    stop_at[0] = began + duration
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in channels:
        c.close()
    every = np.concatenate([np.asarray(x) for x in latencies]) if any(latencies) else None
    summary: dict[str, Any] = {
        "requests": 0 if every is None else int(every.size),
        "duration_us": int(elapsed * 1e6),
        **errors,
        "p50_us": 0 if every is None else int(np.percentile(every, 50) * 1e6),
        "p99_us": 0 if every is None else int(np.percentile(every, 99) * 1e6),
        "max_us": 0 if every is None else int(every.max() * 1e6),
        "driver_cpu_s": round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 3),
    }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="host:port of the gRPC server")
    parser.add_argument("model")
    parser.add_argument(
        "tensor",
        type=Path,
        help='JSON file: {"name", "datatype", "shape", "data"} of the one input',
    )
    parser.add_argument("--conc", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    request = build_request(args.model, json.loads(args.tensor.read_text()))
    summary = drive(args.target, request, args.conc, args.duration)
    print("BENCHJSON " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
