"""Which gunicorn worker model serves flaskserve best: measured, not argued.

    python bench/workers.py [--rounds 2] [--duration 5]

Runs the same flaskserve app (the default repository, W1 digits over V2 JSON) under gunicorn
with 2 workers and each worker model: gthread with 4, 8, 16 and 32 threads (the access logger
and thread-pool worker `flaskserve serve` uses), sync, and gevent when it is installed (the
`bench` extra brings it). Each is loaded at concurrency 1 and 32; rounds are interleaved, and the
medians are printed as a markdown table and written into docs/benchmarks.md (the block between
`<!-- workers:begin -->` and `<!-- workers:end -->`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
from pathlib import Path

from run import (
    BIN,
    HERE,
    ROOT,
    Running,
    Target,
    default_repository,
    digits_row,
    load_run,
    machine,
    v2_body,
    write_doc,
    wrk,
)

VARIANTS = {
    "gthread, 4 threads": ["-k", "flaskserve.service.worker.QueueTimedWorker", "--threads", "4"],
    "gthread, 8 threads": ["-k", "flaskserve.service.worker.QueueTimedWorker",
                                     "--threads", "8"],
    "gthread, 16 threads (default)": ["-k", "flaskserve.service.worker.QueueTimedWorker",
                            "--threads", "16"],
    "gthread, 32 threads": ["-k", "flaskserve.service.worker.QueueTimedWorker",
                            "--threads", "32"],
    "sync (no keep-alive)": ["-k", "sync"],
    "gevent, 1000 connections": ["-k", "gevent", "--worker-connections", "1000"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quiet-wait", type=float, default=5.0)
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    repository = default_repository()
    variants = dict(VARIANTS)
    if importlib.util.find_spec("gevent") is None:
        del variants["gevent, 1000 connections"]
    log_dir = Path(tempfile.mkdtemp(prefix="flaskserve-workers-"))
    runs: dict[tuple[str, int], list[dict]] = {}
    body_file = log_dir / "body.json"
    body = v2_body({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]},
                   digits_row())
    body_file.write_bytes(body)
    for round_index in range(args.rounds):
        names = list(variants)
        if round_index % 2:
            names.reverse()
        for name in names:
            target = Target(
                name.split(",")[0].replace(" ", "-"), name,
                [str(BIN / "gunicorn"), "-w", "2", "-b", "127.0.0.1:{PORT}",
                 "--logger-class", "flaskserve.serving.TextAccessLogger", "--access-logfile", "-",
                 *variants[name], "flaskserve.app:create_app()"],
                "/v2/models/digits/infer", body=body, cwd=HERE,
                env={"FLASKSERVE_REPOSITORY": str(repository),
                     "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="flaskserve-prom-")},
                expect=b"outputs",
            )
            running = Running(target, log_dir, args.ready_timeout)
            try:
                wrk(target.url, 32, args.warmup, body_file)
                for conc in (1, 32):
                    run = load_run(running, name, target.url, conc, body_file, args)
                    runs.setdefault((name, conc), []).append(run)
                    print(json.dumps(run), flush=True)
            finally:
                running.stop()
    info = machine()
    lines = [
        f"Measured {info['date']} on {info['nproc']} cores ({info['cpu']}), {args.rounds} "
        f"interleaved round(s) of {args.duration:g} s per point, medians; `other CPU %` is the "
        "noise gauge (CPU used by neither the server nor wrk).",
        "",
        "| worker model (gunicorn -w 2) | c=1 req/s | c=32 req/s | c=32 p50 ms | c=32 p99 ms "
        "| errors | server CPU ms/req at c=32 | other CPU % | req/s each round (c=1; c=32) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in variants:
        one, many = runs.get((name, 1), []), runs.get((name, 32), [])
        if not one or not many:
            continue
        errors = sum(r["errors"] for r in one + many)
        lines.append(
            f"| {name} | {median(one, 'rps'):.0f} | {median(many, 'rps'):.0f} | "
            f"{median(many, 'p50_ms'):.1f} | {median(many, 'p99_ms'):.1f} | {errors} | "
            f"{median(many, 'server_cpu_ms_per_req'):.2f} | "
            f"{median(one + many, 'other_cpu_pct'):.0f} | {each(one)}; {each(many)} |"
        )
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    write_doc(args.out, table, "<!-- workers:begin -->", "<!-- workers:end -->")


def median(runs: list[dict], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def each(runs: list[dict]) -> str:
    return ", ".join(f"{run['rps']:.0f}" for run in runs)


if __name__ == "__main__":
    main()
