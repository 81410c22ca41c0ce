"""W2 (MiniLM on ONNX Runtime): how many intra-op threads each worker's session should get.

    python bench/cores.py [--rounds 3] [--secs 5] [--only raw|server]

Raw: the exported MiniLM session called in-process at batch 1 and 32, with 1 and 2 intra-op
threads, spinning on and off. Server: `flaskserve serve` on a repository holding only `minilm`,
one server per configuration (workers x threads per worker's session x spinning, set through
the model's model.toml), all started first and then measured in interleaved rounds with wrk
(one sentence per request, W2's body from bench/run.py) at c=1 and c=32. Medians of the rounds,
in sentences per second; on a shared machine compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import LUA, SENTENCE, default_repository, request  # noqa: E402

#: (name, workers, intra-op threads per session, spinning)
SERVERS = [
    ("2w x 1t spin", 2, 1, True),
    ("2w x 1t nospin", 2, 1, False),
    ("2w x 2t spin", 2, 2, True),
    ("2w x 2t nospin", 2, 2, False),
    ("1w x 2t spin", 1, 2, True),
    ("1w x 2t nospin", 1, 2, False),
]
CONCS = (1, 32)

RAW = """
import json, sys, time
from pathlib import Path
import onnxruntime as ort
from flaskserve.models.defaults import default_repository
from flaskserve.runtimes.sentence_onnx import OnnxEncoder
from flaskserve.runtimes.sentence_transformers import model_folder
from flaskserve.core.config import read_model_config
from flaskserve.runtimes.sentence_onnx import export_dir
from flaskserve.settings import Settings

cache = Path(Settings.from_env().cache_dir)
config = read_model_config(default_repository(cache) / "minilm")
export = export_dir(model_folder(config, config.path), cache)
secs = float(sys.argv[1])
for batch in (1, 32):
    for threads in (1, 2):
        for spin in (True, False):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spin)))
            session = ort.InferenceSession(str(export / "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
            encoder = OnnxEncoder(export, session)
            sentences = [sys.argv[2]] * batch
            for _ in range(3):
                encoder.encode(sentences, True)
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < secs:
                encoder.encode(sentences, True)
                calls += 1
            rate = calls * batch / (time.perf_counter() - start)
            print(json.dumps({"batch": batch, "threads": threads, "spin": spin, "rate": rate}))
"""


def raw_round(secs: float) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-c", RAW, str(secs), SENTENCE],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def repository_for(root: Path, threads: int, spin: bool) -> Path:
    source = default_repository() / "minilm"
    folder = root / f"t{threads}-{'spin' if spin else 'nospin'}"
    if folder.is_dir():
        return folder
    shutil.copytree(source, folder / "minilm")
    toml = (source / "model.toml").read_text(encoding="utf-8")
    head = f"intra_op_threads = {threads}\nintra_op_spinning = {'true' if spin else 'false'}\n"
    (folder / "minilm" / "model.toml").write_text(head + toml, encoding="utf-8")
    return folder


def start(repo: Path, workers: int, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "flaskserve",
        "serve",
        str(repo),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(port: int, body: bytes, deadline: float) -> None:
    url = f"http://127.0.0.1:{port}/v2/models/minilm/infer"
    while time.monotonic() < deadline:
        try:
            if request(url, body)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on {port} never answered")


def wrk(port: int, conc: int, secs: int, body_file: Path) -> dict[str, Any]:
    env = {**os.environ, "BENCH_METHOD": "POST", "BENCH_BODY_FILE": str(body_file)}
    url = f"http://127.0.0.1:{port}/v2/models/minilm/infer"
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{secs}s", "--timeout", "10s", "-s", str(LUA), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=secs + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            summary = json.loads(line[len("BENCHJSON ") :])
            summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
            return summary
    raise RuntimeError(f"wrk printed no summary: {out.stdout[-500:]} {out.stderr[-500:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=5)
    parser.add_argument("--raw-secs", type=float, default=2.0)
    parser.add_argument("--only", choices=("raw", "server"))
    parser.add_argument("--base-port", type=int, default=18170)
    args = parser.parse_args()
    body = json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}]}
    ).encode()
    root = Path(tempfile.mkdtemp(prefix="flaskserve-cores-"))
    body_file = root / "w2.json"
    body_file.write_bytes(body)
    servers: list[tuple[str, int, subprocess.Popen[bytes]]] = []
    raw: dict[str, list[float]] = {}
    served: dict[str, list[float]] = {}
    try:
        if args.only != "raw":
            for index, (name, workers, threads, spin) in enumerate(SERVERS):
                repo = repository_for(root, threads, spin)
                port = args.base_port + index
                servers.append((name, port, start(repo, workers, port, root / f"{index}.log")))
            for _, port, _ in servers:
                wait_ready(port, body, time.monotonic() + 300)
        for round_ in range(args.rounds):
            if args.only != "server":
                for row in raw_round(args.raw_secs):
                    key = (
                        f"raw batch {row['batch']} {row['threads']}t "
                        f"{'spin' if row['spin'] else 'nospin'}"
                    )
                    raw.setdefault(key, []).append(row["rate"])
            for name, port, _ in servers:
                for conc in CONCS:
                    summary = wrk(port, conc, args.secs, body_file)
                    served.setdefault(f"{name} c={conc}", []).append(summary["rps"])
                    print(
                        json.dumps(
                            {
                                "round": round_,
                                "server": name,
                                "conc": conc,
                                "rps": round(summary["rps"], 1),
                                "p50_ms": summary["p50_us"] / 1000,
                                "errors": summary["err_status"] + summary["err_read"],
                            }
                        ),
                        flush=True,
                    )
    finally:
        for _, _, process in servers:
            process.terminate()
        for _, _, process in servers:
            process.wait(60)
        shutil.rmtree(root, ignore_errors=True)
    for key, rates in [*raw.items(), *served.items()]:
        print(
            f"{key:32s} median {statistics.median(rates):7.1f}  all "
            + ", ".join(f"{r:.1f}" for r in rates)
        )


if __name__ == "__main__":
    main()
