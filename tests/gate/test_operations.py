"""Graceful operations against a real server (Granian workers): SIGTERM drain, version swap,
worker kill, overload shedding, SIGHUP reload in place.

The SIGTERM tests bound what they wait for generously (a loaded machine once took over 10 s to
stop an idle server) and set the graceful timeout far above that bound, so a stop that waits it
out still fails them; the log says whether a worker ended by itself or was killed."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from service_models import (
    slow_body,
    slow_predicts_started,
    versioned_body,
    write_slow,
    write_versioned,
)

from python_models import python_toml, write_python_model
from servers import Server
from waiting import eventually

#: The graceful timeout of the SIGTERM tests, and the bound, far below it, on their exit.
GRACEFUL_S, PROMPT_S = 600, 60


@pytest.mark.timeout(300)  # a server started and stopped on a loaded machine
def test_sigterm_finishes_every_in_flight_request_then_exits(tmp_path, start_server) -> None:
    write_slow(tmp_path)
    server = start_server(
        [str(tmp_path), "--workers", "2", "--threads", "4", "--graceful-timeout", str(GRACEFUL_S)]
    )
    url = f"{server.url}/v2/models/slow/infer"
    with ThreadPoolExecutor(6) as pool:
        futures = [
            pool.submit(requests.post, url, json=slow_body(1.5), timeout=PROMPT_S)
            for _ in range(6)
        ]
        eventually(
            lambda: slow_predicts_started(tmp_path) == 6, message="all six requests are in predict"
        )
        os.kill(server.process.pid, signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 6
    assert all(r.json()["outputs"][0]["data"] == [1.5] for r in responses)
    assert server.process.wait(timeout=PROMPT_S) == 0
    assert "Killing worker" not in server.log
    try:
        requests.get(f"{server.url}/v2/health/live", timeout=2)
        raise AssertionError("the server still accepts connections after SIGTERM")
    except requests.ConnectionError:
        pass


HEAVY_TOML = python_toml("heavy:Heavy", {"x": ("FP32", [-1])}, {"x": ("FP32", [-1])})

#: A model whose process takes an hour to tear down at interpreter exit, as ML libraries' many
#: modules and objects take seconds (torch, imported when skops loads a scikit-learn model).
HEAVY_PY = """\
import sys
import time
import types


class _Teardown:
    def __del__(self, sleep=time.sleep):
        sleep(3600)


_held = types.ModuleType("heavy_teardown")  # freed when the interpreter clears its modules
_held.teardown = _Teardown()
sys.modules[_held.__name__] = _held
del _held


class Heavy:
    def predict(self, x):
        return {"x": x}
"""


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += _recv(sock)
    return head


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(4096)
    assert chunk, "the server closed the connection mid-response"
    return chunk


@pytest.mark.timeout(300)  # a server started and stopped on a loaded machine
def test_sigterm_stops_an_idle_server_well_before_the_graceful_timeout(
    tmp_path, start_server
) -> None:
    write_python_model(tmp_path, "heavy", HEAVY_TOML, HEAVY_PY)
    server = start_server(
        [str(tmp_path), "--workers", "2", "--graceful-timeout", str(GRACEFUL_S)]
    )
    server.wait_for_log("model heavy version 1 is ready", count=2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = _read_response(idle)
        assert head.startswith(b"HTTP/1.1 200") and b"close" not in head.lower()
        os.kill(server.process.pid, signal.SIGTERM)
        # Nothing to finish: the kept-alive connection is closed at once, and the workers end
        # long before the graceful timeout after which the master kills them (a worker that
        # tore its interpreter down would take the model's hour).
        assert server.process.wait(timeout=PROMPT_S) == 0, server.log
        assert idle.recv(1) == b"", "the kept-alive connection was not closed"
    assert server.log.count("Worker exiting") == 2
    assert "Killing worker" not in server.log


#: A model the first process loads at once; any other waits, after touching `begin`, until a
#: file `release` appears beside it: a worker a test can hold in its start-up.
GATED_LOAD_PY = """\
import os
import time
from pathlib import Path

HERE = Path(__file__).parent
try:
    os.close(os.open(HERE / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
except FileExistsError:
    (HERE / "begin").touch()
    deadline = time.monotonic() + 60
    while not (HERE / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


class GatedLoad:
    def predict(self, x):
        return {"version": x}
"""


@pytest.mark.timeout(300)  # a server started and stopped on a loaded machine
def test_sigterm_while_a_worker_loads_its_models_stops_it_without_the_graceful_timeout(
    tmp_path, start_server
) -> None:
    # The engine installs its stop handler only once the app is built; a SIGTERM before that
    # was lost, and the master waited the whole graceful timeout before killing the worker.
    write_versioned(tmp_path, 1)
    version = tmp_path / "versioned" / "1"
    (version / "versioned.py").write_text(GATED_LOAD_PY)
    toml = tmp_path / "versioned" / "model.toml"
    toml.write_text(toml.read_text().replace("versioned:Versioned", "versioned:GatedLoad"))
    server = start_server(
        [str(tmp_path), "--workers", "2", "--graceful-timeout", str(GRACEFUL_S)]
    )
    eventually(lambda: (version / "begin").exists(), message="the second worker is loading")
    os.kill(server.process.pid, signal.SIGTERM)
    server.wait_for_log("Stopping worker")  # the master has signalled the loading worker
    (version / "release").touch()
    assert server.process.wait(timeout=PROMPT_S) == 0, server.log
    assert server.log.count("Worker exiting") == 2
    assert "Killing worker" not in server.log


def _hammer(url: str, body: dict, stop: threading.Event, results: list) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            try:
                response = session.post(url, json=body, timeout=10)
                results.append((response.status_code, response.json()))
            except requests.RequestException as exc:
                results.append((None, repr(exc)))


@contextmanager
def running_clients(client, count: int, *args) -> Iterator[list[list]]:
    """`count` threads each running `client(*args, stop, results)` with a results list of its
    own; on exit they are told to stop and joined."""
    stop = threading.Event()
    results: list[list] = [[] for _ in range(count)]
    threads = [threading.Thread(target=client, args=(*args, stop, out)) for out in results]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)


def answered_more(results: list[list], count: int) -> list[int]:
    """Until every client has `count` more answers than now; returns how many each had now."""
    marks = [len(out) for out in results]
    eventually(
        lambda: all(len(out) >= mark + count for out, mark in zip(results, marks, strict=True)),
        message=f"every client has {count} more answers",
    )
    return marks


def serve_versioned(root: Path, start_server, *flags: str) -> tuple[Server, str]:
    """Version 1 of the versioned model in `root`, served by two workers of four threads each
    (and `flags`), both ready; returns the server and the model's infer URL."""
    write_versioned(root, 1)
    server = start_server([str(root), "--workers", "2", "--threads", "4", *flags])
    # Ready means one worker answers; the second may still be booting.
    server.wait_for_log("model versioned version 1 is ready", count=2)
    return server, f"{server.url}/v2/models/versioned/infer"


def test_new_version_swaps_in_without_a_failed_request(tmp_path, start_server) -> None:
    server, url = serve_versioned(tmp_path, start_server, "--model-control")
    with running_clients(_hammer, 4, url, versioned_body(2)) as results:
        answered_more(results, 3)
        write_versioned(tmp_path, 2)
        loaded = requests.post(f"{server.url}/v2/repository/models/versioned/load", timeout=30)
        # The other worker replays the load within a poll interval.
        server.wait_for_log("model versioned version 2 is ready", count=2)
        answered_more(results, 3)
    answers = [answer for out in results for answer in out]
    assert loaded.status_code == 200
    failures = [answer for answer in answers if answer[0] != 200]
    assert failures == []
    versions = [answer[1]["outputs"][0]["data"][0] for answer in answers]
    assert 1 in versions and 2 in versions
    assert all(out[-1][1]["model_version"] == "2" for out in results)
    assert all(out[-1][1]["outputs"][0]["data"] == [2, 2] for out in results)


def test_killed_worker_is_replaced_and_only_its_requests_fail(tmp_path, start_server) -> None:
    server, url = serve_versioned(tmp_path, start_server)
    before = server.worker_pids()
    assert len(before) == 2
    with running_clients(_hammer, 4, url, versioned_body()) as results:
        answered_more(results, 3)
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        eventually(
            lambda: len(server.worker_pids() - {victim}) == 2,
            message="the engine replaces the killed worker",
        )
        # Replaced means forked, within milliseconds of the death: once the replacement has
        # loaded its model, every client has long seen its request on the victim fail.
        server.wait_for_log("model versioned version 1 is ready", count=3)
        marks = answered_more(results, 10)
    replaced = server.worker_pids()
    assert victim not in replaced and len(replaced) == 2
    # At most the one request each client had in flight on the killed worker failed, and it
    # failed as a lost connection, never as an HTTP error.
    for out in results:
        failed = [answer for answer in out if answer[0] != 200]
        assert len(failed) <= 1
        assert all(answer[0] is None for answer in failed)
    # Once the worker was replaced, every request succeeded.
    for out, mark in zip(results, marks, strict=True):
        assert out[mark:] and all(answer[0] == 200 for answer in out[mark:])


def test_overload_answers_503_with_retry_after_instead_of_queueing(tmp_path, start_server) -> None:
    write_slow(tmp_path)
    server = start_server(
        [str(tmp_path), "--workers", "1", "--threads", "2", "--max-queue-ms", "300"]
    )
    url = f"{server.url}/v2/models/slow/infer"
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: requests.post(url, json=slow_body(1.0), timeout=30), range(8))
        )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}
    assert statuses.count(200) >= 1 and statuses.count(503) >= 4
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert "overloaded" in response.json()["error"]


def _connect_each_time(url: str, body: dict, stop: threading.Event, results: list) -> None:
    """A client that opens a new connection for every request (no keep-alive); records the
    status and the model version that answered, or the error."""
    while not stop.is_set():
        try:
            response = requests.post(url, json=body, timeout=10, headers={"Connection": "close"})
            version = response.json()["outputs"][0]["data"][0] if response.ok else None
            results.append((response.status_code, version))
        except requests.RequestException as exc:
            results.append((None, repr(exc)))


def test_sighup_reloads_every_worker_in_place_without_losing_a_request(
    tmp_path, start_server
) -> None:
    # Replacing worker processes lost requests: a stopping worker closed the connections it
    # had accepted but not read. A reload in place closes no listener and no connection.
    server, url = serve_versioned(tmp_path, start_server)
    workers = server.worker_pids()
    assert len(workers) == 2
    with running_clients(_connect_each_time, 6, url, versioned_body()) as results:
        answered_more(results, 3)
        write_versioned(tmp_path, 2)
        os.kill(server.process.pid, signal.SIGHUP)
        server.wait_for_log("Worker reloaded", count=2)
        marks = answered_more(results, 5)
    answers = [answer for out in results for answer in out]
    assert len(answers) > 50
    assert [a for a in answers if a[0] != 200] == []
    # Each worker read the repository again, loaded version 2 and answers with it only.
    assert server.log.count("model versioned version 2 is ready") == 2
    assert server.log.count("Worker reloaded") == 2
    # A client's request in flight at the mark may have run on the old app; none after it.
    assert all(
        answer == (200, 2)
        for out, mark in zip(results, marks, strict=True)
        for answer in out[mark + 1 :]
    )
    assert {version for _, version in answers} == {1, 2}
    # The same processes serve: nothing was respawned.
    assert server.worker_pids() == workers
    assert "Spawning worker" not in server.log.split("reloading 2 workers in place", 1)[1]


def test_a_reload_whose_model_fails_to_load_keeps_the_old_model_serving(
    tmp_path, start_server
) -> None:
    write_versioned(tmp_path, 1)
    server = start_server([str(tmp_path), "--workers", "2", "--threads", "4"])
    server.wait_for_log("model versioned version 1 is ready", count=2)
    workers = server.worker_pids()
    url = f"{server.url}/v2/models/versioned/infer"
    (tmp_path / "versioned" / "1" / "versioned.py").write_text(
        "raise RuntimeError('this model file is broken')\n"
    )
    os.kill(server.process.pid, signal.SIGHUP)
    server.wait_for_log("Worker reload refused", count=2)
    assert "this model file is broken" in server.log
    assert "Worker reloaded" not in server.log
    for _ in range(10):
        response = requests.post(
            url, json=versioned_body(), headers={"Connection": "close"}, timeout=10
        )
        assert response.status_code == 200
        assert response.json()["outputs"][0]["data"] == [1]
        assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    assert server.worker_pids() == workers
    # Once the repository is fixed, the next SIGHUP reloads.
    write_versioned(tmp_path, 2)
    os.kill(server.process.pid, signal.SIGHUP)
    server.wait_for_log("Worker reloaded", count=2)
    response = requests.post(url, json=versioned_body(), timeout=10)
    assert response.json()["outputs"][0]["data"] == [2]
    assert server.worker_pids() == workers


#: A model whose every load writes "begin" and, 1 s later, "end" to a file beside it, and whose
#: unload writes "unloaded" to another.
SLOW_LOAD_PY = """\
import time
from pathlib import Path

LOG = Path(__file__).parent / "loads"
with open(LOG, "a") as log:
    log.write("begin\\n")
time.sleep(1.0)
with open(LOG, "a") as log:
    log.write("end\\n")


class SlowLoad:
    def predict(self, x):
        return {"version": x}

    def unload(self):
        with open(LOG.with_name("unloads"), "a") as log:
            log.write("unloaded\\n")
"""


def test_sighups_during_a_reload_run_one_more_reload_after_it_never_two_at_once(
    tmp_path, start_server
) -> None:
    write_versioned(tmp_path, 1)
    (tmp_path / "versioned" / "1" / "versioned.py").write_text(SLOW_LOAD_PY)
    toml = tmp_path / "versioned" / "model.toml"
    toml.write_text(toml.read_text().replace("versioned:Versioned", "versioned:SlowLoad"))
    loads = tmp_path / "versioned" / "1" / "loads"
    server = start_server([str(tmp_path), "--workers", "1", "--threads", "2"])
    server.wait_for_log("model versioned version 1 is ready")
    os.kill(server.process.pid, signal.SIGHUP)
    eventually(lambda: loads.read_text().count("begin") == 2, message="the reload is loading")
    os.kill(server.process.pid, signal.SIGHUP)
    os.kill(server.process.pid, signal.SIGHUP)
    server.wait_for_log("Worker reloaded", count=2)
    # Loads never overlapped: each began after the previous one ended.
    assert loads.read_text().splitlines() == ["begin", "end"] * 3
    # Each replaced app had its model unloaded.
    unloads = loads.with_name("unloads")
    eventually(
        lambda: unloads.exists() and unloads.read_text().count("unloaded") == 2,
        message="both replaced apps unloaded their model",
    )
    response = requests.post(
        f"{server.url}/v2/models/versioned/infer", json=versioned_body(), timeout=10
    )
    assert response.status_code == 200


#: A model holding 320 MB, allocated (and touched) when its module is loaded.
BIG_PY = """\
import numpy as np

_DATA = np.ones(40_000_000)


class Big:
    def predict(self, x):
        return {"version": x * int(_DATA[0])}
"""


def _rss_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:", 1)[1].split()[0]) // 1024


def test_reloads_free_the_memory_of_the_models_they_replace(tmp_path, start_server) -> None:
    write_versioned(tmp_path, 1)
    (tmp_path / "versioned" / "1" / "versioned.py").write_text(BIG_PY)
    toml = tmp_path / "versioned" / "model.toml"
    toml.write_text(toml.read_text().replace("versioned:Versioned", "versioned:Big"))
    server = start_server([str(tmp_path), "--workers", "1", "--threads", "2"])
    server.wait_for_log("model versioned version 1 is ready")
    (worker,) = server.worker_pids()
    booted = _rss_mib(worker)
    for reloads in range(1, 4):
        os.kill(server.process.pid, signal.SIGHUP)
        server.wait_for_log("Worker reloaded", count=reloads)
        # Retiring the old app follows the log line; kept, each model would add 320 MB.
        eventually(
            lambda: _rss_mib(worker) < booted + 160,
            message=lambda: f"RSS {_rss_mib(worker)} MiB, {booted} MiB at boot",
        )
    assert server.worker_pids() == {worker}
    response = requests.post(
        f"{server.url}/v2/models/versioned/infer", json=versioned_body(), timeout=10
    )
    assert response.json()["outputs"][0]["data"] == [1]


def test_a_busy_keep_alive_client_does_not_hold_the_only_thread(tmp_path, start_server) -> None:
    # A thread stays on a kept-alive connection for its next request only while that connection
    # is the only one its worker serves: another connection gets the thread at once.
    write_versioned(tmp_path, 1)
    server = start_server([str(tmp_path), "--workers", "1", "--threads", "1"])
    url = f"{server.url}/v2/models/versioned/infer"
    with running_clients(_hammer_lean, 1, server.port) as (busy,):
        eventually(lambda: len(busy) > 20, message="the busy client is served")
        other = requests.post(url, json=versioned_body(), timeout=5)
        answered_meanwhile = len(busy)
        eventually(lambda: len(busy) > answered_meanwhile, message="the busy client goes on")
    assert other.status_code == 200
    assert set(busy) == {200}


def _hammer_lean(port: int, stop: threading.Event, results: list) -> None:
    """Back-to-back requests on one kept-alive connection, each sent as soon as the previous
    answer is read (http.client: far less client time between requests than `requests`)."""
    body = json.dumps(versioned_body())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while not stop.is_set():
            connection.request(
                "POST", "/v2/models/versioned/infer", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            results.append(response.status)
    finally:
        connection.close()
