"""W1 on two flaskserve source trees side by side: the engine adapter's cost, measured in one run.

    python bench/body_buffering.py --baseline-src ../main/src [--rounds 3] [--duration 10] [--hello]

Starts `flaskserve serve --workers 2` (the default models) from this checkout's `src` and from
`--baseline-src`, then runs wrk (`-t1`, keep-alive, bench/wrk_body.lua) on W1 (the digits
model, one row) at c=1 and c=32, alternating the two servers within each round so that a
machine's drift hits both alike. Prints the median of the rounds as a Markdown table
(docs/benchmarks.md, "Choosing the body buffering"). With `--hello`, the Flask hello route on
Granian (`bench/plain_app.py`, `GET /home/bench`, `--workers 2`) joins each round at the same
concurrencies, and the table gives each tree's req/s as a share of it (the HTTP ceiling).
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
    BIN,
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


HELLO = "hello (Granian)"


def hello_target() -> Target:
    return Target(
        "hello-granian",
        "Flask hello route, Granian",
        [str(BIN / "granian"), "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
         "--port", "{PORT}", "plain_app:app"],
        "/home/bench",
        cwd=HERE,
        expect=b"hello,bench",
    )


def url_of(name: str, server: Running) -> str:
    if name == HELLO:
        return server.target.url
    return f"http://127.0.0.1:{server.target.port}/v2/models/digits/infer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PYTHONPATH",
                        help="one more server, e.g. with another package on its path")
    parser.add_argument("--hello", action="store_true",
                        help="measure the Flask hello route on Granian too, as the ceiling")
    args = parser.parse_args()
    trees = {"baseline": str(args.baseline_src.resolve()), "this tree": str(HERE.parent / "src")}
    trees.update(variant.split("=", 1) for variant in args.variant)
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        running = {name: Running(target(name.replace(" ", "-"), src), log_dir, 180)
                   for name, src in trees.items()}
        if args.hello:
            running[HELLO] = Running(hello_target(), log_dir, 180)
        try:
            first = next(iter(running.values()))
            meta = model_metadata(first.target.port, "digits")
            assert meta is not None, "no digits model"
            body = log_dir / "w1.json"
            body.write_bytes(v2_body(meta, digits_row()))
            for name, server in running.items():  # warm up
                wrk(url_of(name, server), 32, 3, None if name == HELLO else body)
            for round_no in range(args.rounds):
                order = list(running.items())
                if round_no % 2:
                    order.reverse()
                for conc in CONCURRENCY:
                    for name, server in order:
                        pids = process_tree(server.process.pid)
                        before = cpu_jiffies(pids)
                        summary = wrk(url_of(name, server), conc, args.duration,
                                      None if name == HELLO else body)
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
    shown = [*trees, *([HELLO] if args.hello else [])]
    print("| tree | c | req/s | p50 ms | p99 ms | p99/p50 | server CPU per request |"
          + (" req/s / hello |" if args.hello else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if args.hello else ""))
    for conc in CONCURRENCY:
        hello_rps = (statistics.median(r["rps"] for r in results[(HELLO, conc)])
                     if args.hello else None)
        for name in shown:
            runs = results[(name, conc)]
            rps = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50_us"] for r in runs) / 1000
            p99 = statistics.median(r["p99_us"] for r in runs) / 1000
            cpu = statistics.median(r["cpu_us"] for r in runs)
            share = f" {rps / hello_rps:.3f} |" if hello_rps else ""
            print(f"| {name} | {conc} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {p99 / p50:.1f} | "
                  f"{cpu:.0f} us |{share}")
    print(f"\n{args.rounds} interleaved rounds of {args.duration:g} s, medians; "
          f"{os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
