"""Generation: aggregate tokens/s, time to first token (TTFT) and time per output token (TPOT)
at 1, 8 and 32 concurrent streams, for flaskserve, its raw limit and two peers, same model and
prompts, in one run.

    PYTHONPATH=src python bench/generation.py [--seconds 4] [--gen-rounds 2] [--tokens 64]
    python bench/run.py --only gen           # the same, its table into docs/benchmarks.md
    PYTHONPATH=src python bench/generation.py --gen-targets raw,flaskserve,flaskserve-before \
        --baseline-src ../before/src         # a change, before and after, in one run

Targets (the model is `scribe`, models/scribe.py, built into a temporary folder; every request is
a chat of one user message, `max_tokens` --tokens at temperature 1, streamed):
- **raw**: transformers' continuous batching in this process, on flaskserve's own runtime engine
  (`runtimes/text_generation.py`, the settings it serves with), no HTTP, with scribe's one torch
  thread and with two (`raw-2threads`): the faster of the two at each level is the limit;
- **flaskserve**: `flaskserve serve --workers 1 --threads 64` on the same folder, OpenAI
  `POST /v1/chat/completions` with `stream: true`;
- **transformers serve** (`transformers serve --continuous-batching`, transformers' own
  OpenAI-compatible server; needs fastapi and uvicorn, in the `bench` extra) with the same KV cache
  settings as flaskserve's runtime;
- **LitServe** OpenAI spec streaming (`bench/litserve_generate.py`) from LitServe's own venv
  (`$PEERS_DIR/venv-litserve-gen`, or `--litserve-python`); left out, and the reason printed, when
  that venv is missing (create it with `--setup-litserve`).

Each point runs N client threads (one connection each) that start generations back to back for
`--seconds` (each starts at least one); tokens/s is the completion tokens of every finished
generation over the wall time until the last one ended. Tokens are the server's
`usage.completion_tokens` (`stream_options.include_usage`), else the number of content chunks.
Targets run one at a time (each server is stopped before the next starts), in interleaved rounds
(every second round reversed); each figure is the best of the rounds, since a shared machine's
load drifts within minutes. Ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
PROMPTS = ["The data set", "Return the", "This function", "The number of", "A list of"]
LEVELS = (1, 8, 32)
LABELS = {
    "raw": "raw: transformers continuous batching in process (no HTTP)",
    "raw-2threads": "raw, 2 torch threads (scribe's default is 1)",
    "flaskserve": "**flaskserve** (`serve --workers 1 --threads 64`)",
    "flaskserve-before": "flaskserve from `--baseline-src` (the code before a change)",
    "flaskserve-2threads": "flaskserve, `scribe` with 2 torch threads",
    "transformers-serve": "`transformers serve --continuous-batching`",
    "litserve": "LitServe 0.2 OpenAI spec (one worker, no batching)",
}
#: The KV cache every continuous batcher here gets: the runtime's defaults.
CACHE = {"num_blocks": 64, "page_size": 64, "max_batch_tokens": 256}
#: The peers get scribe's one torch thread too, and no hub.
PEER_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
Result = tuple[float, int, float]  # TTFT s, completion tokens, seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its descendants."""
    from run import cpu_jiffies, process_tree

    return cpu_jiffies(process_tree(pid)) / os.sysconf("SC_CLK_TCK")


def tree_switches(pid: int) -> int:
    """Context switches (voluntary and not) of the live threads of process `pid` and its
    descendants: a thread that ended takes its count with it."""
    from run import process_tree

    total = 0
    for process in process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{process}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                status = Path(f"/proc/{process}/task/{task}/status").read_text()
            except OSError:
                continue
            total += sum(int(line.split()[1]) for line in status.splitlines()
                         if "ctxt_switches:" in line)
    return total


def measure(streams: int, run_one: Callable[[int], Result], seconds: float,
            server_cpu: Callable[[], float] = time.process_time,
            server_switches: Callable[[], int] | None = None) -> dict[str, Any]:
    """`streams` threads, each starting generations back to back for `seconds`; with the CPU
    the server used (`server_cpu`: seconds so far) and this process (the clients) used, and
    the server's context switches (`server_switches`: so far) when it is another process."""
    results: list[Result] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> None:
        n = 0
        while n == 0 or time.perf_counter() < deadline:
            try:
                result = run_one(i + n * streams)
            except Exception as exc:  # counted, and the point goes on
                with lock:
                    errors.append(repr(exc)[:200])
                return
            n += 1
            with lock:
                results.append(result)

    started = time.perf_counter()
    cpu0, own0 = server_cpu(), time.process_time()
    switches0 = server_switches() if server_switches else 0
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu, own = server_cpu() - cpu0, time.process_time() - own0
    switches = server_switches() - switches0 if server_switches else None
    made = max(1, sum(r[1] for r in results))
    ttfts = [r[0] for r in results if r[0] > 0] or [float("nan")]  # 0: no text came
    per_token = [(r[2] - r[0]) / (r[1] - 1) for r in results if r[1] > 1]
    return {
        "streams": streams,
        "generations": len(results),
        "errors": len(errors),
        "error": errors[0] if errors else None,
        "tokens": sum(r[1] for r in results),
        "tokens_per_s": sum(r[1] for r in results) / wall,
        "ttft_p50_ms": percentile(ttfts, 50) * 1000,
        "ttft_p99_ms": percentile(ttfts, 99) * 1000,
        "tpot_ms": statistics.mean(per_token) * 1000 if per_token else float("nan"),
        "server_cpu_ms_per_token": cpu * 1000 / made,
        "client_cpu_ms_per_token": float("nan") if server_cpu is time.process_time
        else own * 1000 / made,
        "server_switches_per_token": float("nan") if switches is None else switches / made,
        "cpu_busy": (cpu + (0 if server_cpu is time.process_time else own)) / wall,
    }


def raw_runner(model_dir: Path, tokens: int) -> tuple[Callable[[int], Result], Callable[[], None]]:
    from flaskserve.core.config import read_model_config
    from flaskserve.core.model import GenerationRequest
    from flaskserve.runtimes.registry import load_model

    model = load_model(read_model_config(model_dir), "1", model_dir / "1")

    def run_one(i: int) -> Result:
        started = time.perf_counter()
        first, made = 0.0, 0
        request = GenerationRequest(messages=tuple(messages(i)), max_tokens=tokens)
        for event in model.generate(request):
            if event.completion_tokens and not first:
                first = time.perf_counter() - started
            made = event.completion_tokens
        return first, made, time.perf_counter() - started

    return run_one, model.unload


def http_runner(url: str, model: str, tokens: int,
                extra: dict[str, Any]) -> Callable[[int], Result]:
    session = threading.local()

    def run_one(i: int) -> Result:
        if not hasattr(session, "s"):
            session.s = requests.Session()
        body = {"model": model, "messages": messages(i), "max_tokens": tokens, "stream": True,
                "temperature": 1.0, "stream_options": {"include_usage": True}, **extra}
        started = time.perf_counter()
        first, chunks, usage = 0.0, 0, None
        with session.s.post(url + "/v1/chat/completions", json=body, stream=True,
                            timeout=300) as answer:
            answer.raise_for_status()
            for line in answer.iter_lines():
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    chunks += 1
                    if not first:
                        first = time.perf_counter() - started
                if chunk.get("usage"):
                    usage = chunk["usage"].get("completion_tokens")
        return first, usage if usage is not None else chunks, time.perf_counter() - started

    return run_one


class Server:
    """A server in its own process group, stopped (SIGTERM, then SIGKILL) by `stop`."""

    def __init__(self, cmd: list[str], ready: str, log: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, **env})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-600:]}")
            try:
                if requests.get(ready, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{' '.join(cmd[:3])} not ready in 300 s; see {log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def litserve_python(args: argparse.Namespace) -> Path:
    if args.litserve_python:
        return Path(args.litserve_python)
    peers = Path(os.environ.get("PEERS_DIR") or Path.home() / ".cache" / "flaskserve-peers")
    return peers / "venv-litserve-gen" / "bin" / "python"


def setup_litserve(python: Path) -> None:
    """LitServe's own venv, reusing this venv's torch and transformers through a .pth file (so
    nothing pulls another torch): only litserve and its web stack are installed there."""
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", str(python.parent.parent)],
                   check=True)
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = subprocess.run([sys.executable, "-c", "import torch, os; print(os.path.dirname("
                           "os.path.dirname(torch.__file__)))"], capture_output=True, text=True,
                          check=True).stdout.strip()
    Path(site, "flaskserve-venv.pth").write_text(here + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "litserve==0.2.19"],
                   check=True)


def targets(model_dir: Path, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Each target: (command, ready URL, model name, env, extra request fields), or a string
    saying why it is out. `transformers serve` samples only when the model's generation config
    says `do_sample` (scribe's does not, and greedy ends its chats at once; a request cannot
    turn sampling on in its continuous batching), so it serves a copy of the version folder
    whose `generation_config.json` adds `do_sample: true, temperature: 1.0`."""
    bindir = Path(sys.executable).parent
    version = str(model_dir / "1")
    sampling = model_dir.parent.parent / "sampling" / "1"
    shutil.copytree(model_dir / "1", sampling)
    config_file = sampling / "generation_config.json"
    config = json.loads(config_file.read_text())
    config.update(do_sample=True, temperature=1.0)
    config_file.write_text(json.dumps(config))
    found: dict[str, Any] = {
        "flaskserve": ([sys.executable, "-m", "flaskserve", "serve", str(model_dir.parent),
                        "--workers", "1", "--threads", "64", "--host", "127.0.0.1", "--port",
                        str(port)], "/v2/health/ready", model_dir.name, {}, {}),
    }
    if args.baseline_src:
        cmd, ready, name, _, extra = found["flaskserve"]
        found["flaskserve-before"] = (cmd, ready, name, {"PYTHONPATH": args.baseline_src}, extra)
    transformers = bindir / "transformers"
    if not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn")):
        found["transformers-serve"] = "needs fastapi and uvicorn (pip install 'flaskserve[bench]')"
    else:
        found["transformers-serve"] = ([str(transformers), "serve", str(sampling),
                                        "--continuous-batching", "--device", "cpu", "--host",
                                        "127.0.0.1", "--port", str(port), "--log-level",
                                        "warning", "--cb-num-blocks", str(CACHE["num_blocks"]),
                                        "--cb-block-size", str(CACHE["page_size"]),
                                        "--cb-max-batch-tokens", str(CACHE["max_batch_tokens"])],
                                       "/health", str(sampling), PEER_ENV, {})
    python = litserve_python(args)
    if args.setup_litserve and not python.exists():
        setup_litserve(python)
    if python.exists():
        found["litserve"] = ([str(python), str(HERE / "litserve_generate.py")], "/health",
                             "scribe", {"MODEL_DIR": version, "PORT": str(port), **PEER_ENV}, {})
    else:
        found["litserve"] = (f"LitServe's venv {python.parent.parent} is missing (run "
                             "bench/generation.py --setup-litserve once: pip install "
                             "litserve there, reusing this venv's torch)")
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every target at every level, `args.rounds` interleaved rounds; the best of each."""
    load_before = os.getloadavg()[0]  # what else ran: the report says it
    from run import free_port

    from flaskserve.models import scribe

    scratch = Path(tempfile.mkdtemp(prefix="flaskserve-genbench-"))
    model_dir = scratch / "repo" / "scribe"
    scribe.build(model_dir)
    port = free_port()
    two = scratch / "two-threads" / "scribe"
    shutil.copytree(model_dir, two)
    toml = two / "model.toml"
    toml.write_text(re.sub(r"(?m)^threads = \d+", "threads = 2", toml.read_text()))
    found = targets(model_dir, port, args)
    cmd, ready, name, env, extra = found["flaskserve"]
    found["flaskserve-2threads"] = ([*cmd[:4], str(two.parent), *cmd[5:]], ready, name, env,
                                    extra)
    names = [n for n in ("raw", "raw-2threads", *found) if n in args.gen_targets]
    points: dict[str, list[dict[str, Any]]] = {}
    failed = {n: t for n, t in found.items() if isinstance(t, str)}
    try:
        for round_index in range(args.gen_rounds):
            for name in reversed(names) if round_index % 2 else names:
                if name in failed:
                    continue
                try:
                    points.setdefault(name, []).extend(
                        run_target(name, found.get(name), two if name == "raw-2threads"
                                   else model_dir, port, scratch, args))
                except (RuntimeError, OSError, requests.RequestException) as exc:
                    failed[name] = str(exc)[:500]
                    print(f"  gen {name}: FAILED {failed[name]}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = {name: [max((p for p in runs if p["streams"] == n), key=lambda p: p["tokens_per_s"])
                   for n in args.levels if any(p["streams"] == n for p in runs)]
            for name, runs in points.items()}
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            "tokens": args.tokens, "seconds": args.seconds, "rounds": args.gen_rounds,
            "load_before": round(load_before, 2), "best": best, "all": points, "failed": failed}


def run_target(name: str, target: Any, model_dir: Path, port: int, scratch: Path,
               args: argparse.Namespace) -> list[dict[str, Any]]:
    server = None
    if name.startswith("raw"):
        run_one, unload = raw_runner(model_dir, args.tokens)
    else:
        cmd, ready, model, env, extra = target
        server = Server(cmd, f"http://127.0.0.1:{port}{ready}", scratch / f"{name}.log", env)
        run_one, unload = http_runner(f"http://127.0.0.1:{port}", model, args.tokens, extra), None
    cpu = time.process_time if server is None else partial(tree_cpu_s, server.process.pid)
    switches = None if server is None else partial(tree_switches, server.process.pid)
    try:
        measure(2, run_one, 0)  # warm-up
        out = []
        for level in args.levels:
            point = {"target": name, **measure(level, run_one, args.seconds, cpu, switches)}
            out.append(point)
            print(f"  gen {name:18} {level:>2} streams {point['tokens_per_s']:>7.0f} tok/s  "
                  f"TTFT p50 {point['ttft_p50_ms']:.0f} p99 {point['ttft_p99_ms']:.0f} ms  "
                  f"TPOT {point['tpot_ms']:.1f} ms  CPU ms/token server "
                  f"{point['server_cpu_ms_per_token']:.2f} client "
                  f"{point['client_cpu_ms_per_token']:.2f}, server switches/token "
                  f"{point['server_switches_per_token']:.1f}  ({point['generations']} "
                  f"generations, {point['errors']} errors)", flush=True)
        return out
    finally:
        if unload is not None:
            unload()
        if server is not None:
            server.stop()


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)  # NaN: n/a


def verdict(value: float | None, goal: float) -> str:
    return "n/a" if value is None else ("met" if value >= goal else "**not met**")


def report(results: dict[str, Any], command: str) -> str:
    best = results["best"]
    raw: dict[int, dict[str, Any]] = {}  # the limit: the faster raw setting at each level
    for p in best.get("raw", []) + best.get("raw-2threads", []):
        if p["streams"] not in raw or p["tokens_per_s"] > raw[p["streams"]]["tokens_per_s"]:
            raw[p["streams"]] = p
    load = results.get("load_before")
    quiet = "" if load is None else f", 1-minute load average {load:g} before it started"
    lines = [f"Measured {results['date']} on {results['machine']}{quiet}, "
             f"`{command}`: `scribe`, one-message chats, "
             f"`max_tokens` {results['tokens']} at temperature 1, streamed; "
             f"{results['seconds']:g} s of generations back to back per point, best of "
             f"{results['rounds']} interleaved round(s).", "",
             "| target | streams | tokens/s | / raw | / 1 stream | TTFT p50 ms | TTFT p99 ms | "
             "TPOT ms | server CPU ms/token | client CPU ms/token | server context switches "
             "/token | generations (errors) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, label in LABELS.items():
        points = {p["streams"]: p for p in best.get(name, [])}
        one = points.get(1)
        for streams, p in sorted(points.items()):
            to_raw = p["tokens_per_s"] / raw[streams]["tokens_per_s"] if streams in raw else None
            to_one = p["tokens_per_s"] / one["tokens_per_s"] if one else None
            lines.append(f"| {label} | {streams} | {p['tokens_per_s']:.0f} | {fmt(to_raw)} | "
                         f"{fmt(to_one)} | {fmt(p['ttft_p50_ms'], '.0f')} | "
                         f"{fmt(p['ttft_p99_ms'], '.0f')} | {fmt(p['tpot_ms'], '.1f')} | "
                         f"{fmt(p.get('server_cpu_ms_per_token'))} | "
                         f"{fmt(p.get('client_cpu_ms_per_token'))} | "
                         f"{fmt(p.get('server_switches_per_token'), '.1f')} | "
                         f"{p['generations']} ({p['errors']}) |")
    lines += ["", "Issue 21's targets (ratios of this run):", "",
              "| target | value | goal | met |", "|---|---|---|---|"]
    served = {p["streams"]: p for p in best.get("flaskserve", [])}
    for streams, goal in ((1, 0.9), (8, 0.8), (32, 0.8)):
        value = (served[streams]["tokens_per_s"] / raw[streams]["tokens_per_s"]
                 if streams in served and streams in raw else None)
        lines.append(f"| flaskserve / raw tokens/s, {streams} stream(s) | {fmt(value)} | "
                     f">= {goal} | {verdict(value, goal)} |")
    for streams in (8, 32):
        value = (served[streams]["tokens_per_s"] / served[1]["tokens_per_s"]
                 if streams in served and 1 in served else None)
        lines.append(f"| flaskserve {streams} streams / 1 stream tokens/s | {fmt(value)} | >= 3 | "
                     f"{verdict(value, 3)} |")
    peers = [n for n in ("transformers-serve", "litserve") if best.get(n)]
    for streams in sorted(served):
        for key, more in (("tokens_per_s", True), ("ttft_p99_ms", False)):
            others = [(n, q[key]) for n in peers for q in best[n]
                      if q["streams"] == streams and q[key] == q[key]]  # not NaN
            if not others:
                continue
            ahead = all((served[streams][key] > v) if more else (served[streams][key] < v)
                        for _, v in others)
            what = "tokens/s" if more else "TTFT p99"
            lines.append(f"| flaskserve ahead of {', '.join(n for n, _ in others)} on {what}, "
                         f"{streams} stream(s) | {served[streams][key]:.0f} vs "
                         f"{', '.join(f'{v:.0f}' for _, v in others)} | ahead | "
                         f"{'met' if ahead else '**not met**'} |")
    for name, why in results["failed"].items():
        lines += ["", f"{LABELS.get(name, name)}: not measured: {why}"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gen-rounds", type=int, default=2,
                        help="interleaved rounds of the generation targets; the best of each")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each generation")
    parser.add_argument("--seconds", type=float, default=4.0, help="per point (generation)")
    parser.add_argument("--levels", type=lambda v: [int(n) for n in v.split(",")],
                        default=list(LEVELS), help="concurrent streams, e.g. 1,8,32")
    parser.add_argument("--gen-targets", type=lambda v: v.split(","),
                        default=[n for n in LABELS if n != "flaskserve-2threads"],
                        help=f"generation targets, of: {', '.join(LABELS)} [all]")
    parser.add_argument("--baseline-src", help="also serve flaskserve from this src folder "
                        "(another checkout's src/): before and after a change, in one run")
    parser.add_argument("--litserve-python", help="LitServe venv's python")
    parser.add_argument("--setup-litserve", action="store_true",
                        help="create LitServe's venv when it is missing")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_arguments(parser)
    args = parser.parse_args()
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n" + report(results, "python bench/generation.py " + " ".join(sys.argv[1:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
