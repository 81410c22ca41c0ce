"""Worker memory and W2 throughput of two flaskserve source trees, side by side in one run.

    python bench/w2_memory.py BEFORE_SRC AFTER_SRC [--rounds 2] [--duration 8]

For each round and each tree (interleaved, the order reversed every second round), it starts
`python -m flaskserve serve --workers 2` with that tree first on PYTHONPATH and no repository
(the default models: digits and, with the `nlp` extra, MiniLM), then drives the benchmark's
load with `bench/run.py`'s pieces: W1 digits at c=32, then W2 MiniLM (one sentence per V2 JSON
request) at c=1 and c=32, and reads each worker's RSS afterwards (`bench/probes.py`). A second
server per tree, `--workers 1`, answers one V2 request of 2,000 sentences of 20 to 40 words;
its worker's peak RSS (`VmHWM`) and RSS are read before and after. Figures are printed as JSON
lines and a summary; only loopback and only the processes started here are used.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import probes
import run

WORDS = [
    "the", "model", "server", "answers", "each", "request", "with", "embeddings", "computed",
    "in", "chunks", "so", "that", "memory", "stays", "bounded", "while", "many", "sentences",
    "arrive", "from", "clients", "across", "network", "every", "second",
]


def sentences(count: int, seed: int = 0) -> list[str]:
    """`count` sentences of 20 to 40 words (MiniLM reads about 25 to 50 tokens of each)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) for _ in range(count)]


def status_kib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


def target(name: str, src: str, workers: int, env: dict[str, str] | None = None) -> run.Target:
    return run.Target(
        name, f"flaskserve ({src})",
        [sys.executable, "-m", "flaskserve", "serve", "--host", "127.0.0.1", "--port", "{PORT}",
         "--workers", str(workers)],
        "/v2/models/minilm/ready", env={"PYTHONPATH": src, **(env or {})},
    )


def load_point(src: str, args: argparse.Namespace, log_dir: Path, body_dir: Path,
               label: str) -> dict[str, Any]:
    env = dict(item.split("=", 1) for item in args.env) if label == "after" else {}
    running = run.Running(target(label, src, 2, env), log_dir, args.ready_timeout)
    try:
        port = running.target.port
        base = f"http://127.0.0.1:{port}/v2/models"
        digits = run.model_metadata(port, "digits")
        minilm = run.model_metadata(port, "minilm")
        if digits is None or minilm is None:
            raise RuntimeError("the server does not serve digits and minilm (the nlp extra?)")
        w1 = body_dir / "w1.json"
        w1.write_bytes(run.v2_body(digits, run.digits_row()))
        w2 = body_dir / "w2.json"
        w2.write_bytes(run.v2_body(minilm, run.SENTENCE))
        out: dict[str, Any] = {"label": label}
        run.wrk(f"{base}/digits/infer", 32, args.duration, w1)
        run.wrk(f"{base}/minilm/infer", 32, args.warmup, w2)
        for conc in (1, 32):
            point = run.load_run(running, label, f"{base}/minilm/infer", conc, w2, args)
            out[f"w2_c{conc}_rps"] = point["rps"]
            out[f"w2_c{conc}_errors"] = point["errors"]
        mem = probes.memory(running.process.pid, run.process_tree(running.process.pid))
        out["workers_rss_mib"] = [w["rss_mib"] for w in mem["workers"]]
        out["max_worker_rss_mib"] = mem["max_worker_rss_mib"]
        return out
    finally:
        running.stop()


def big_request(src: str, args: argparse.Namespace, log_dir: Path, label: str) -> dict[str, Any]:
    running = run.Running(target(label + "-2000", src, 1), log_dir, args.ready_timeout)
    try:
        (worker,) = running.workers()
        port = running.target.port
        texts = sentences(2000)
        body = json.dumps({"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
        ]}).encode()
        before_rss = status_kib(worker, "VmRSS:")
        before_peak = status_kib(worker, "VmHWM:")
        started = time.monotonic()
        status, answer = run.request(f"http://127.0.0.1:{port}/v2/models/minilm/infer", body,
                                     timeout=600)
        seconds = time.monotonic() - started
        rows = json.loads(answer)["outputs"][0]["shape"][0] if status == 200 else None
        return {
            "label": label, "status": status, "rows": rows, "seconds": round(seconds, 1),
            "rss_before_mib": round(before_rss), "peak_before_mib": round(before_peak),
            "peak_after_mib": round(status_kib(worker, "VmHWM:")),
            "rss_after_mib": round(status_kib(worker, "VmRSS:")),
        }
    finally:
        running.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="the source tree measured first (its src folder)")
    parser.add_argument("after", help="the source tree compared with it")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quiet-wait", type=float, default=5.0)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable of the `after` servers")
    parser.add_argument("--big", choices=("both", "after", "none"), default="both",
                        help="which trees answer the 2,000-sentence request")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="flaskserve-w2mem-"))
    body_dir = Path(tempfile.mkdtemp(prefix="flaskserve-w2mem-bodies-"))
    trees = [("before", args.before), ("after", args.after)]
    points: list[dict[str, Any]] = []
    for index in range(args.rounds):
        for label, src in trees if index % 2 == 0 else trees[::-1]:
            point = load_point(src, args, log_dir, body_dir, label)
            print(json.dumps(point), flush=True)
            points.append(point)
            if index == 0 and (args.big == "both" or (args.big == "after" and label == "after")):
                print(json.dumps(big_request(src, args, log_dir, label)), flush=True)
    for label, _ in trees:
        mine = [p for p in points if p["label"] == label]
        summary = {key: statistics.median(p[key] for p in mine)
                   for key in ("w2_c1_rps", "w2_c32_rps", "max_worker_rss_mib")}
        print(f"{label}: median of {len(mine)} rounds {json.dumps(summary)}", flush=True)
    print(f"server logs in {log_dir}")


if __name__ == "__main__":
    main()
