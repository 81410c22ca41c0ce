"""Generation throughput: aggregate tokens/s at 1, 8 and 32 concurrent streams through
flaskserve's OpenAI streaming route, against transformers' continuous batching in process on the
same model and prompts (the raw limit); time to first token p50/p99 and time per output token.

    PYTHONPATH=src python bench/generation.py [--model-dir DIR] [--tokens 64] [--streams 1,8,32]

Without `--model-dir` it builds `scribe` (models/scribe.py) into a temporary folder. The raw
limit runs in this process, on the runtime's own engine (the same continuous batching settings as
served); one `flaskserve serve` worker serves the same folder, and the same prompts are streamed
over HTTP from threads here, one connection per stream. Raw and served runs alternate
(`--rounds`, best of each), since a shared machine's load drifts within minutes. Every request asks
for `--tokens` tokens at temperature 1; tokens are counted from what came back (a stream may
end earlier at the end-of-text token), so tokens/s compares like with like. Prints a Markdown
table; ratios within one run are what to compare (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import requests

PROMPTS = ["The data set", "Return the", "This function", "The number of", "A list of"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(concurrency: int, run_one: Callable[[int], tuple[float, int, float]]) -> dict:
    """Run `concurrency` generations at once; each returns (ttft s, tokens, seconds)."""
    results: list[tuple[float, int, float]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        result = run_one(i)
        with lock:
            results.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    tokens = sum(r[1] for r in results)
    ttfts = [r[0] for r in results]
    per_token = [(r[2] - r[0]) / (r[1] - 1) for r in results if r[1] > 1]
    return {
        "streams": concurrency,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": percentile(ttfts, 50) * 1000,
        "ttft_p99_ms": percentile(ttfts, 99) * 1000,
        "tpot_ms": statistics.mean(per_token) * 1000 if per_token else float("nan"),
    }


def raw_runner(model_dir: Path, tokens: int) -> tuple[Callable[[int], tuple[float, int, float]],
                                                       Callable[[], None]]:
    from flaskserve.core.config import read_model_config
    from flaskserve.core.model import GenerationRequest
    from flaskserve.runtimes.registry import load_model

    model = load_model(read_model_config(model_dir), "1", model_dir / "1")

    def run_one(i: int) -> tuple[float, int, float]:
        started = time.perf_counter()
        first, made = 0.0, 0
        request = GenerationRequest(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=tokens)
        for event in model.generate(request):
            if event.completion_tokens and not first:
                first = time.perf_counter() - started
            made = event.completion_tokens
        return first, made, time.perf_counter() - started

    return run_one, model.unload


def http_runner(url: str, tokens: int) -> Callable[[int], tuple[float, int, float]]:
    def run_one(i: int) -> tuple[float, int, float]:
        body = {
            "model": "bench",
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        first, made = 0.0, 0
        with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as answer:
            for line in answer.iter_lines():
                if not line.startswith(b"data: {"):
                    continue
                chunk = orjson.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["text"] and not first:
                    first = time.perf_counter() - started
                if chunk.get("usage"):
                    made = chunk["usage"]["completion_tokens"]
        return first, made, time.perf_counter() - started

    return run_one


def serve(repo: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "flaskserve", "serve", str(repo), "--workers", "1",
         "--threads", "64", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).ok:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("the server did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a model folder (model.toml + 1/)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "repo"
        if args.model_dir is None:
            from flaskserve.models import scribe

            scribe.build(repo / "bench")
        else:
            repo.mkdir()
            (repo / "bench").symlink_to(args.model_dir.resolve())
        server = serve(repo, args.port)
        run_raw, unload = raw_runner(repo / "bench", args.tokens)
        try:
            run_http = http_runner(f"http://127.0.0.1:{args.port}", args.tokens)
            run_raw(0)  # warm up both
            run_http(0)
            raw, served = [], []
            for n in levels:  # interleaved rounds, best of each: the machine's load drifts
                rounds = [(measure(n, run_raw), measure(n, run_http)) for _ in range(args.rounds)]
                raw.append(max((r for r, _ in rounds), key=lambda r: r["tokens_per_s"]))
                served.append(max((s for _, s in rounds), key=lambda s: s["tokens_per_s"]))
        finally:
            unload()
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"{args.tokens} tokens per request\n")
    print("| streams | raw tok/s | flaskserve tok/s | ratio | TTFT p50 / p99 ms (raw) | "
          "TTFT p50 / p99 ms (flaskserve) | ms per token (raw / flaskserve) |")
    print("|---|---|---|---|---|---|---|")
    for r, s in zip(raw, served, strict=True):
        print(f"| {r['streams']} | {r['tokens_per_s']:.0f} | {s['tokens_per_s']:.0f} | "
              f"{s['tokens_per_s'] / r['tokens_per_s']:.2f} | {r['ttft_p50_ms']:.0f} / "
              f"{r['ttft_p99_ms']:.0f} | {s['ttft_p50_ms']:.0f} / {s['ttft_p99_ms']:.0f} | "
              f"{r['tpot_ms']:.1f} / {s['tpot_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
