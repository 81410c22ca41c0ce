"""A bounded load run with the operations that usually drop requests, done in the middle of it.

    python bench/reliability.py [--duration 30] [--concurrency 32] [--workers 2]

It builds a digits repository and an API keys file in a temporary folder, starts
`flaskserve serve --auth keys.toml --workers N` and drives it with CONCURRENCY client threads
(each with a keep-alive session, half of them with one tenant's key, half with another's), each
sending one digits row per request, back to back. During the run, at fixed fractions of the
duration, it:

1. sends SIGHUP to the master (each worker reloads its app in place: same processes, models
   read again, the old app drained and unloaded);
2. publishes version 2 of the model and loads it (`POST /v2/repository/models/digits/load`
   with an admin key): answers must move from version 1 to version 2;
3. SIGKILLs one worker (the master replaces it);
4. at the end, sends SIGTERM while requests are in flight and stops issuing new ones: every
   request in flight must still be answered.

Then it reads the usage database the server wrote and compares it, per key, with what the
clients counted. It prints a Markdown report (requests sent, succeeded, failed and why, per
phase) that docs/reliability.md quotes. Python clients are not a load generator for speed
numbers (see bench/run.py for those); here every single request's fate is what counts.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import requests

from flaskserve.gate.keys import add_key
from flaskserve.gate.metering import read_usage
from flaskserve.models import digits

TENANTS = ("tenant-a", "tenant-b")
#: Seconds of plain load after each event has finished, before the next one.
MIN_GAP = 4.0


@dataclass
class Outcome:
    key: str
    started: float
    ended: float
    status: int | None
    version: str | None = None
    error: str | None = None


@dataclass
class Event:
    name: str
    at: float
    detail: str = ""


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def mark(self, name: str, detail: str = "") -> Event:
        event = Event(name, time.monotonic(), detail)
        self.events.append(event)
        print(f"[{time.strftime('%H:%M:%S')}] {name} {detail}", flush=True)
        return event


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_pids(master: int) -> list[int]:
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except FileNotFoundError:
        return []
    return sorted(int(pid) for pid in text.split())


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def client(url: str, key: str, bodies: list[bytes], stop: threading.Event, run: Run) -> None:
    headers = {"Authorization": f"Bearer {key[1]}", "Content-Type": "application/json"}
    rng = np.random.default_rng(abs(hash(threading.current_thread().name)) % 2**32)
    with requests.Session() as session:
        while not stop.is_set():
            body = bodies[int(rng.integers(len(bodies)))]
            started = time.monotonic()
            try:
                response = session.post(url, data=body, headers=headers, timeout=60)
            except requests.RequestException as exc:
                cause = exc.__context__ or exc
                run.add(Outcome(key[0], started, time.monotonic(), None,
                                error=f"{type(exc).__name__} ({type(cause).__name__})"))
                continue
            version = None
            error = None
            if response.status_code == 200:
                version = response.json()["model_version"]
            else:
                error = response.text[:160]
            run.add(Outcome(key[0], started, time.monotonic(), response.status_code, version,
                            error))


def start_server(folder: Path, port: int, workers: int) -> subprocess.Popen:
    log = open(folder / "server.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "flaskserve", "serve", str(folder / "repo"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         "--threads", "8", "--auth", str(folder / "keys.toml"), "--graceful-timeout", "30",
         "--log-level", "info"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="flaskserve-reliability-"))
    repo = folder / "repo"
    digits.build(repo / "digits")
    staged_v2 = folder / "staged-v2"
    shutil.copytree(repo / "digits" / "1", staged_v2)
    keys = {name: add_key(folder / "keys.toml", name) for name in TENANTS}
    admin = add_key(folder / "keys.toml", "ops", admin=True)

    from sklearn.datasets import load_digits

    features = load_digits().data.astype(np.float32)
    bodies = [
        orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                  "data": row.tolist()}]})
        for row in features[:256]
    ]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(folder, port, args.workers)
    if not wait_until(lambda: _ready(base), 120):
        server.kill()
        sys.exit(f"server did not start; see {folder / 'server.log'}")

    run = Run()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=client,
            args=(f"{base}/v2/models/digits/infer", (name, keys[name]), bodies, stop, run),
            name=f"client-{i}",
        )
        for i in range(args.concurrency)
        for name in [TENANTS[i % len(TENANTS)]]
    ]
    started = run.mark("load started", f"{args.concurrency} clients")
    for thread in threads:
        thread.start()

    master = server.pid
    log = folder / "server.log"
    schedule = [
        (0.25, "SIGHUP (reload in place)", lambda: _reload(master, args.workers, log)),
        (0.50, "version 2 loaded", lambda: _swap(base, repo, staged_v2, admin)),
        (0.75, "worker SIGKILLed", lambda: _kill_worker(master, args.workers)),
    ]
    settled = started.at
    for fraction, name, action in schedule:
        # Events keep their place in the run, but never come closer than MIN_GAP seconds after
        # the previous one finished (a slow reload pushes the rest back).
        time.sleep(max(0.0, started.at + fraction * args.duration - time.monotonic(),
                       settled + MIN_GAP - time.monotonic()))
        event = run.mark(name)
        event.detail = action()
        settled = time.monotonic()
        print(f"    {event.detail}", flush=True)
    time.sleep(max(0.0, started.at + args.duration - time.monotonic(),
                   settled + MIN_GAP - time.monotonic()))

    stop.set()
    sigterm = run.mark("SIGTERM", "clients stop issuing new requests")
    os.kill(master, signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    exit_code = server.wait(timeout=60)
    exited = time.monotonic()
    in_flight_at_sigterm = [
        o for o in run.outcomes if o.started < sigterm.at and o.ended >= sigterm.at
    ]

    usage = {row.key_id: row for row in read_usage(folder / "usage.sqlite3")}
    print(report(run, args, sigterm, exited, exit_code, in_flight_at_sigterm, usage))
    if args.keep:
        print(f"\nfiles kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _reload(master: int, workers: int, log: Path) -> str:
    """SIGHUP, then wait until every worker logged its reload; the worker processes stay."""
    before = set(worker_pids(master))
    done = log.read_text(errors="replace").count("Worker reloaded")
    began = time.monotonic()
    os.kill(master, signal.SIGHUP)
    reloaded = wait_until(
        lambda: log.read_text(errors="replace").count("Worker reloaded") >= done + workers, 90
    )
    after = set(worker_pids(master))
    return (
        f"{workers} workers reloaded in {time.monotonic() - began:.1f}s, "
        f"processes {'unchanged' if after == before else f'{sorted(before)} -> {sorted(after)}'}"
        + ("" if reloaded else " (not all reloaded within 90 s)")
    )


def _swap(base: str, repo: Path, staged: Path, admin: str) -> str:
    shutil.copytree(staged, repo / "digits" / "2")
    began = time.monotonic()
    response = requests.post(
        f"{base}/v2/repository/models/digits/load",
        headers={"Authorization": f"Bearer {admin}"},
        timeout=120,
    )
    return f"POST load -> {response.status_code} in {time.monotonic() - began:.2f}s"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busiest_worker(master: int) -> int:
    """The worker that used the most CPU over the last half second: the one serving most of
    the connections (gthread workers do not share keep-alive connections evenly)."""
    pids = worker_pids(master)
    before = {pid: _cpu_seconds(pid) for pid in pids}
    time.sleep(0.5)
    return max(pids, key=lambda pid: _cpu_seconds(pid) - before[pid])


def _kill_worker(master: int, workers: int) -> str:
    victim = _busiest_worker(master)
    os.kill(victim, signal.SIGKILL)
    began = time.monotonic()
    replaced = wait_until(
        lambda: victim not in worker_pids(master) and len(worker_pids(master)) == workers, 90
    )
    took = time.monotonic() - began
    return f"killed the busiest worker, {victim}; " + (
        f"a replacement was forked {took:.1f}s later" if replaced else "not replaced in 90 s"
    )


def report(run, args, sigterm, exited, exit_code, in_flight, usage) -> str:
    outcomes = sorted(run.outcomes, key=lambda o: o.started)
    events = [e for e in run.events if e.name != "load started"]
    start = run.events[0].at

    def phase_of(outcome: Outcome) -> str:
        current = "steady"
        for event in events:
            if outcome.started >= event.at:
                current = event.name
        return current

    lines = ["## Results", ""]
    total = len(outcomes)
    ok = sum(1 for o in outcomes if o.status == 200)
    elapsed = sigterm.at - start
    lines += [
        f"- {args.concurrency} clients, {args.workers} workers x 8 threads, {elapsed:.1f} s of "
        "load, digits model (1 row per request), API keys and metering on.",
        f"- requests sent: **{total}**, answered 200: **{ok}**, failed: **{total - ok}** "
        f"({total / elapsed:.0f} requests/s on average).",
        f"- SIGTERM with {len(in_flight)} requests in flight: "
        f"{sum(1 for o in in_flight if o.status == 200)} of them answered 200; the master "
        f"exited with code {exit_code} {exited - sigterm.at:.1f} s after the signal.",
        "",
        "| phase (from the event on) | sent | 200 | failed | p99 ms | max ms | why they failed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    by_phase: dict[str, list[Outcome]] = collections.defaultdict(list)
    for outcome in outcomes:
        by_phase[phase_of(outcome)].append(outcome)
    for name in ["steady", *[e.name for e in events]]:
        group = by_phase.get(name, [])
        failed = [o for o in group if o.status != 200]
        why = collections.Counter(
            o.error if o.status is None else f"HTTP {o.status}: {o.error}" for o in failed
        )
        reasons = "; ".join(f"{count} x {reason}" for reason, count in why.most_common()) or "-"
        took = np.array([o.ended - o.started for o in group]) * 1000 if group else np.zeros(1)
        lines.append(f"| {name} | {len(group)} | {len(group) - len(failed)} | {len(failed)} | "
                     f"{np.percentile(took, 99):.0f} | {took.max():.0f} | {reasons} |")
    event_lines = [f"- +{e.at - start:.1f} s: {e.name}. {e.detail}" for e in events]
    lines += ["", "Events:", "", *event_lines]

    versions = [o.version for o in outcomes if o.version]
    swap = next((e for e in events if e.name.startswith("version 2")), None)
    if swap is not None:
        last_v1 = max((o.ended for o in outcomes if o.version == "1"), default=swap.at)
        first_v2 = min((o.ended for o in outcomes if o.version == "2"), default=swap.at)
        lines += [
            "",
            f"Versions answered: {dict(collections.Counter(versions))}. First version 2 answer "
            f"{first_v2 - swap.at:+.2f} s, last version 1 answer {last_v1 - swap.at:+.2f} s "
            "from the load request (each worker switches atomically; the worker that did not "
            "take the request loads version 2 itself once it sees the load).",
        ]

    lines += ["", "| key | requests with an HTTP answer (client) | requests metered | "
                  "failed (client / metered) | items metered | match |", "|---|---:|---:|---:|"
                  "---:|---|"]
    for key in TENANTS:
        mine = [o for o in outcomes if o.key == key and o.status is not None]
        failed = sum(1 for o in mine if o.status >= 400)
        row = usage.get(key)
        metered = row.requests if row else 0
        metered_failed = row.failed if row else 0
        items = row.items if row else 0
        match = "yes" if metered == len(mine) and metered_failed == failed else "NO"
        lines.append(f"| {key} | {len(mine)} | {metered} | {failed} / {metered_failed} | "
                     f"{items} | {match} |")
    latencies = np.array([o.ended - o.started for o in outcomes if o.status == 200]) * 1000
    if len(latencies):
        lines += ["", f"Latency of answered requests: p50 {np.percentile(latencies, 50):.1f} ms, "
                      f"p99 {np.percentile(latencies, 99):.1f} ms, "
                      f"max {latencies.max():.0f} ms."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
