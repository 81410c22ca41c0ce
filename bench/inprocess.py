"""Per-request CPU of flaskserve's own app on W1, without a server or a load generator.

Calls the WSGI app directly (what gunicorn or Granian would call) with the body bench/run.py
sends to the digits model, as a worker does: the Prometheus multiprocess folder set, one thread.
Prints the mean CPU microseconds (process time: steadier than wall time on a busy machine) per
request over `--requests` calls, and with `--profile` the cProfile table of the same loop. The
engine's own work (parsing HTTP, writing the
response) is not in these figures; docs/benchmarks.md has it from py-spy under wrk.

    python bench/inprocess.py [--requests 20000] [--profile] [--repository PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def digits_repository(cache_dir: Path) -> Path:
    """A repository holding only the embedded digits model (what W1 serves)."""
    from flaskserve.models.defaults import default_repository

    root = Path(tempfile.mkdtemp(prefix="flaskserve-inprocess-"))
    shutil.copytree(default_repository(cache_dir) / "digits", root / "digits")
    return root


def w1_body() -> bytes:
    from sklearn.datasets import load_digits

    row = [float(v) for v in load_digits().data[0]]
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}
    return json.dumps({"inputs": [tensor]}).encode()


def environ_for(body: bytes, path: str) -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(
        path=path,
        method="POST",
        data=body,
        content_type="application/json",
        headers={"Host": "127.0.0.1:8000", "User-Agent": "wrk"},
    )
    return builder.get_environ()


def run(app: Any, environ: dict[str, Any], body: bytes, count: int) -> float:
    """Mean seconds per request over `count` calls of `app`."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    started = time.process_time()
    for _ in range(count):
        env = environ.copy()
        env["wsgi.input"] = io.BytesIO(body)
        result = app(env, start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    elapsed = time.process_time() - started
    if statuses[-1] != "200 OK":
        raise SystemExit(f"the app answered {statuses[-1]}")
    return elapsed / count


def per_call(fn: Any, count: int) -> float:
    """Mean microseconds of `fn()` over `count` calls (best of three rounds)."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(count):
            fn()
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def breakdown(app: Any, environ: dict[str, Any], body: bytes, count: int) -> dict[str, float]:
    """Microseconds per request of each part of a W1 request, each measured on its own, and of
    the whole app with parts taken out (the difference is what the part costs in place)."""
    from flask import Flask, Response

    from flaskserve.app import services_of
    from flaskserve.core.batching import run_model
    from flaskserve.core.observers import NoObserver
    from flaskserve.core.request import InferenceRequest
    from flaskserve.observability import tallies
    from flaskserve.protocol.infer import encode_infer_response, parse_infer_request

    services = services_of(app)
    assert services is not None
    dataplane = services.dataplane
    model = dataplane.lookup("digits")

    def check(tensors: Any, outputs: Any) -> None:
        dataplane.check(model, tensors, outputs)

    parsed = parse_infer_request(body, None, check)
    outputs = run_model(model, parsed.inputs, NoObserver())
    parts: dict[str, float] = {}
    parts["whole app"] = run(app, environ, body, count) * 1e6
    parts["parse (orjson + checks + numpy)"] = per_call(
        lambda: parse_infer_request(body, None, check), count
    )
    parts["model (predict + conform)"] = per_call(
        lambda: run_model(model, parsed.inputs, NoObserver()), count
    )
    parts["data plane + batching + model"] = per_call(
        lambda: dataplane.infer(
            InferenceRequest(model, parsed.inputs, parsed.datatypes, checked=True)
        ),
        count,
    )
    parts["encode (orjson)"] = per_call(
        lambda: encode_infer_response(model, outputs, parsed), count
    )

    def recorded() -> None:
        tallies.request_started("digits")
        tallies.queue_waited("digits", "1", 0.0)
        tallies.predicted("digits", "1", 1, 0.0002)
        tallies.request_answered("digits", "1", "v2", "200", 0.0004)
        tallies.request_ended("digits")

    parts["metrics + statistics (tallies)"] = per_call(recorded, count)
    saved = (
        dict(app.before_request_funcs),
        dict(app.after_request_funcs),
        dict(app.teardown_request_funcs),
    )
    for funcs in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
        funcs.clear()
    parts["whole app, no hooks"] = run(app, environ, body, count) * 1e6
    app.before_request_funcs.update(saved[0])
    app.after_request_funcs.update(saved[1])
    app.teardown_request_funcs.update(saved[2])

    bare = Flask("bare")
    answer = encode_infer_response(model, outputs, parsed)[0]

    @bare.post("/v2/models/<name>/infer")
    def infer(name: str) -> Response:
        from flask import request

        request.get_data()
        return Response(answer, mimetype="application/json")

    parts["bare Flask route (read body, fixed answer)"] = run(bare, environ, body, count) * 1e6
    return {name: round(value, 1) for name, value in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--handshake", type=Path, help="folder for the callgrind handshake")
    args = parser.parse_args()

    metrics_dir = tempfile.mkdtemp(prefix="flaskserve-inprocess-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from threadpoolctl import threadpool_limits

    from flaskserve.app import create_app
    from flaskserve.settings import Settings

    settings = Settings.from_env()
    repository = args.repository or digits_repository(Path(settings.cache_dir))
    app = create_app(settings.with_overrides(repository=str(repository)))
    body = w1_body()
    environ = environ_for(body, "/v2/models/digits/infer")
    with threadpool_limits(1):
        run(app, environ, body, 500)  # warm up: first-use imports, batcher, metric children
        if args.handshake:
            # For `valgrind --tool=callgrind --instr-atstart=no`: the caller turns counting on
            # (callgrind_control -i on) once this says ready, so only the loop is counted.
            ready, go = args.handshake / "ready", args.handshake / "go"
            ready.touch()
            while not go.exists():
                time.sleep(0.05)
            run(app, environ, body, args.requests)
            (args.handshake / "done").touch()
            while not (args.handshake / "exit").exists():
                time.sleep(0.05)
        elif args.breakdown:
            print(json.dumps(breakdown(app, environ, body, args.requests), indent=1))
        elif args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            run(app, environ, body, args.requests)
            profiler.disable()
            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.sort_stats(os.environ.get("SORT", "cumulative")).print_stats(60)
        else:
            means = [run(app, environ, body, args.requests) for _ in range(args.rounds)]
            print(
                json.dumps(
                    {
                        "us_per_request": [round(m * 1e6, 1) for m in means],
                        "best_us": round(min(means) * 1e6, 1),
                    }
                )
            )
    shutil.rmtree(metrics_dir, ignore_errors=True)
    if args.repository is None:
        shutil.rmtree(repository, ignore_errors=True)


if __name__ == "__main__":
    main()
