"""Two measurements of a running server that are not throughput: slow clients and memory.

`slow_clients` opens connections that stall mid-headers and mid-body (raw sockets: a client
library would finish the request) and, while they hang, times fresh requests to the health
route and to an inference, as a load balancer's probe and a user would send them. `memory`
reads RSS and PSS of every process of a server's tree from /proc, engine-agnostic: the root and
any process with children are the master side, the leaves are workers, and multiprocessing's
helper processes are counted apart.
"""

from __future__ import annotations

import http.client
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

#: Helper processes some engines start next to their workers (multiprocessing's trackers).
HELPERS = ("resource_tracker", "semaphore_tracker", "forkserver")


def _stalled(port: int, path: str, body: bytes, mid_body: bool) -> socket.socket | None:
    """A connection that sent part of a request and then nothing more; None if refused."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode()
    partial = head + b"\r\n" + body[: len(body) // 2] if mid_body else head + b"X-Stalled: "
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.sendall(partial)
    except OSError:
        return None
    return sock


def _probe(port: int, method: str, path: str, body: bytes, timeout: float) -> tuple[float, bool]:
    """Seconds one request on a fresh connection took, and whether it was answered 200."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body else {}
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        response.read()
        ok = response.status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return time.monotonic() - started, ok


def _still_open(sock: socket.socket) -> bool:
    """True when the server has neither answered nor closed this stalled connection."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # an answer (a 408, a 400) or b"": closed
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def slow_clients(
    port: int, infer_path: str, body: bytes, stalled: int = 100, probes: int = 20,
    timeout: float = 2.0, settle: float = 0.5,
) -> dict[str, Any]:
    """`stalled` connections stuck mid-headers and as many mid-body, then `probes` health and
    `probes` inference requests, interleaved; a probe taking `timeout` s counts as failed, and
    after 3 failures in a row of one kind the rest of that kind are not sent (so a starved
    server costs seconds, not minutes)."""
    socks = [_stalled(port, infer_path, body, mid_body=i >= stalled) for i in range(2 * stalled)]
    opened = [s for s in socks if s is not None]
    time.sleep(settle)  # let the engine accept them and start reading
    kinds = {"health": ("GET", "/v2/health/ready", b""), "infer": ("POST", infer_path, body)}
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    failed = {kind: 0 for kind in kinds}
    streak = {kind: 0 for kind in kinds}
    for _ in range(probes):
        for kind, (method, path, payload) in kinds.items():
            if streak[kind] >= 3:
                failed[kind] += 1
                continue
            seconds, ok = _probe(port, method, path, payload, timeout)
            latencies[kind].append(seconds)
            failed[kind] += 0 if ok else 1
            streak[kind] = 0 if ok else streak[kind] + 1
    still_open = sum(_still_open(s) for s in opened)
    for sock in opened:
        sock.close()
    result: dict[str, Any] = {"stalled_requested": 2 * stalled, "stalled_opened": len(opened),
                              "stalled_still_open": still_open, "probes": probes,
                              "timeout_s": timeout}
    for kind in kinds:
        times = latencies[kind] or [timeout]
        result[kind] = {"p50_ms": round(statistics.median(times) * 1000, 2),
                        "max_ms": round(max(times) * 1000, 2), "failed": failed[kind],
                        "all_ms": [round(t * 1000, 2) for t in latencies[kind]]}
    return result


def _kib(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _children(pids: list[int]) -> dict[int, list[int]]:
    """Each pid of `pids` -> its children among `pids`."""
    tree: dict[int, list[int]] = {pid: [] for pid in pids}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid in tree:
            tree[ppid].append(pid)
    return tree


def memory(root: int, pids: list[int]) -> dict[str, Any]:
    """RSS and PSS (MiB) of the server tree `pids` rooted at `root`, split into master side,
    workers and helpers; PSS shares pages mapped by several processes out among them."""
    children = _children(pids)
    out: dict[str, Any] = {"master": [], "workers": [], "helpers": []}
    for pid in pids:
        cmd = _cmdline(pid)
        entry = {"pid": pid, "rss_mib": round(_kib(pid, "status", "VmRSS:") / 1024, 1),
                 "pss_mib": round(_kib(pid, "smaps_rollup", "Pss:") / 1024, 1),
                 "cmd": cmd[:120]}
        if pid == root or children.get(pid):
            out["master"].append(entry)
        elif any(helper in cmd for helper in HELPERS):
            out["helpers"].append(entry)
        else:
            out["workers"].append(entry)
    workers = out["workers"]
    out["max_worker_rss_mib"] = max((w["rss_mib"] for w in workers), default=None)
    out["max_worker_pss_mib"] = max((w["pss_mib"] for w in workers), default=None)
    out["total_pss_mib"] = round(sum(e["pss_mib"] for k in ("master", "workers", "helpers")
                                     for e in out[k]), 1)
    out["readable_pss"] = os.access(f"/proc/{root}/smaps_rollup", os.R_OK)
    return out
