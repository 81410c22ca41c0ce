"""Request bodies are read on the engine's event loop within `--body-timeout-ms`: a thousand
stalled bodies hold no thread that health checks and inference need, and each is cut at its
deadline with 408 (and a log line saying how much of it arrived).

The thousand sockets are read as a loaded machine delivers them: a 408 and the close that
follows it may arrive in separate reads, so what each socket received is kept until it closes
(a reader that dropped what came before the close saw one socket in a thousand "closed with
nothing" under load)."""

from __future__ import annotations

import collections
import re
import resource
import selectors
import socket
from contextlib import ExitStack

import orjson
import pytest
import requests

from waiting import eventually

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
STALLED_HEAD = (
    b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: localhost\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
)
STALLS = 1000
#: The stalled bodies' deadline: long enough that the requests served meanwhile are answered
#: before the newest stalled body is cut, however loaded the machine (a property the test
#: checks, not a time it measures).
BODY_TIMEOUT_MS = 10_000


def _allow_open_files(count: int) -> None:
    """Raise this process's soft limit on open files (inherited by the servers it starts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= count, "too few open files allowed"


def _read_until_closed(client: socket.socket, received: bytearray) -> bool:
    """Add what the server sent on `client` (non-blocking) to `received`; whether it has closed
    the connection."""
    while True:
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        if not chunk:
            return True
        received += chunk


@pytest.mark.timeout(300)  # a thousand sockets and a server on a loaded machine
def test_a_thousand_stalled_bodies_hold_no_thread_and_are_each_cut_at_their_deadline(
    start_server, digits_repo
) -> None:
    _allow_open_files(3 * STALLS)
    server = start_server(
        [str(digits_repo), "--workers", "1", "--body-timeout-ms", str(BODY_TIMEOUT_MS)]
    )
    url = server.url
    with ExitStack() as stack:
        clients = []
        for _ in range(STALLS):
            client = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            client.sendall(STALLED_HEAD + b'{"inputs"')
            clients.append(client)
        for _ in range(3):  # served while the stalled bodies are awaited
            assert requests.get(f"{url}/v2/health/ready", timeout=30).status_code == 200
            inference = requests.post(f"{url}/v2/models/digits/infer", json=BODY, timeout=30)
            assert inference.status_code == 200
        # ... all of them: the newest stalled body is still awaited (its socket has nothing to
        # read). Were the stalled bodies holding the threads, these answers would have come
        # only once the bodies were cut.
        newest = clients[-1]
        newest.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing to read: neither an answer nor a close
            newest.recv(1, socket.MSG_PEEK)
        selector = stack.enter_context(selectors.DefaultSelector())
        received: dict[socket.socket, bytearray] = {}
        for client in clients:
            client.setblocking(False)
            selector.register(client, selectors.EVENT_READ)
            received[client] = bytearray()
        answers: dict[socket.socket, bytes] = {}

        def all_cut() -> bool:
            for key, _ in selector.select(timeout=0.5):
                client = key.fileobj
                assert isinstance(client, socket.socket)
                if _read_until_closed(client, received[client]):
                    answers[client] = bytes(received[client])
                    selector.unregister(client)
            return len(answers) == STALLS

        eventually(all_cut, timeout=120, message=lambda: f"{len(answers)} of {STALLS} were cut")
    firsts = collections.Counter(answer.split(b"\r\n", 1)[0] for answer in answers.values())
    assert firsts == {b"HTTP/1.1 408 Request Timeout": STALLS}, firsts
    server.wait_for_log(f"did not arrive within {BODY_TIMEOUT_MS} ms", count=STALLS)
    assert requests.get(f"{url}/v2/health/ready", timeout=30).status_code == 200


def test_a_body_that_stops_arriving_gets_408_at_its_deadline_and_a_log_line(
    start_server, digits_repo
) -> None:
    server = start_server([str(digits_repo), "--workers", "1", "--body-timeout-ms", "1000"])
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(STALLED_HEAD + b"12345")
        client_port = client.getsockname()[1]
        client.settimeout(30)
        answer = b""
        while chunk := client.recv(65536):  # until the server closes the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"5 of 1000 bytes arrived" in body and b"--body-timeout-ms" in body
    server.wait_for_log(f"from 127.0.0.1:{client_port}: the request body did not arrive")
    line = next(line for line in server.log.splitlines() if f":{client_port}:" in line)
    assert re.search(r"5 of 1000 body bytes arrived; answered 408", line), line


def test_a_chunked_body_is_read_within_the_deadline_and_served(start_server, digits_repo) -> None:
    server = start_server([str(digits_repo), "--workers", "1", "--body-timeout-ms", "1000"])
    payload = orjson.dumps(BODY)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:100], payload[100:])
    )
    head = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(head + chunks + b"0\r\n\r\n")
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
