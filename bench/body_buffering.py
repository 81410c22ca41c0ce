"""W1 on two flaskserve source trees side by side: the engine adapter's cost, measured in one run.

    python bench/body_buffering.py --baseline-src ../main/src [--rounds 3] [--duration 10]

Starts `flaskserve serve --workers 2` (the default models) from this checkout's `src` and from
`--baseline-src`, then runs wrk (`-t1`, keep-alive, bench/wrk_body.lua) on W1 (the digits
model, one row) at c=1 and c=32, alternating the two servers within each round so that a
machine's drift hits both alike. Prints the median of the rounds as a Markdown table
(docs/benchmarks.md, "Choosing the body buffering").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    Running,
    Target,
    cpu_jiffies,
    digits_row,
    model_metadata,
    process_tree,
    v2_body,
    wrk,
)

CONCURRENCY = (1, 32)
TICKS = os.sysconf("SC_CLK_TCK")


def target(name: str, src: str) -> Target:
    return Target(
        name,
        f"flaskserve from {src}",
        [sys.executable, "-m", "flaskserve", "serve", "--host", "127.0.0.1", "--port", "{PORT}",
         "--workers", "2"],
        "/v2/health/ready",
        env={"PYTHONPATH": str(src)},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PYTHONPATH",
                        help="one more server, e.g. with another package on its path")
    args = parser.parse_args()
    trees = {"baseline": str(args.baseline_src.resolve()), "this tree": str(HERE.parent / "src")}
    trees.update(variant.split("=", 1) for variant in args.variant)
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        running = {name: Running(target(name.replace(" ", "-"), src), log_dir, 180)
                   for name, src in trees.items()}
        try:
            first = next(iter(running.values()))
            meta = model_metadata(first.target.port, "digits")
            assert meta is not None, "no digits model"
            body = log_dir / "w1.json"
            body.write_bytes(v2_body(meta, digits_row()))
            for server in running.values():  # warm up
                wrk(f"{server.target.url.rsplit('/v2', 1)[0]}/v2/models/digits/infer", 32, 3,
                    body)
            for round_no in range(args.rounds):
                order = list(running.items())
                if round_no % 2:
                    order.reverse()
                for conc in CONCURRENCY:
                    for name, server in order:
                        url = f"http://127.0.0.1:{server.target.port}/v2/models/digits/infer"
                        pids = process_tree(server.process.pid)
                        before = cpu_jiffies(pids)
                        summary = wrk(url, conc, args.duration, body)
                        jiffies = cpu_jiffies(pids) - before
                        summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
                        # The server's CPU per request (all its processes): what the machine's
                        # other load changes least.
                        summary["cpu_us"] = jiffies * 1e6 / TICKS / max(1, summary["requests"])
                        results.setdefault((name, conc), []).append(summary)
                        print(f"round {round_no + 1} {name:9} c={conc:<3} "
                              f"{summary['rps']:8.0f} req/s p50 {summary['p50_us'] / 1000:6.2f}"
                              f" ms p99 {summary['p99_us'] / 1000:6.2f} ms cpu "
                              f"{summary['cpu_us']:5.0f} us errors "
                              f"{summary['err_status'] + summary['err_read']}", flush=True)
                        time.sleep(1)
        finally:
            for server in running.values():
                server.stop()
    print()
    print("| tree | c | req/s | p50 ms | p99 ms | p99/p50 | server CPU per request |")
    print("|---|---|---|---|---|---|---|")
    for conc in CONCURRENCY:
        for name in trees:
            runs = results[(name, conc)]
            rps = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50_us"] for r in runs) / 1000
            p99 = statistics.median(r["p99_us"] for r in runs) / 1000
            cpu = statistics.median(r["cpu_us"] for r in runs)
            print(f"| {name} | {conc} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {p99 / p50:.1f} | "
                  f"{cpu:.0f} us |")
    print(f"\n{args.rounds} interleaved rounds of {args.duration:g} s, medians; "
          f"{os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
