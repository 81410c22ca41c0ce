"""The gthread worker's accept policy: a worker that holds as many connections as it has
threads pauses accepting, so a burst of connections reaches the other workers too. And its
exit: a stopped worker ends its process without the interpreter's teardown."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import time
from typing import Any

from gunicorn.config import Config

from flaskserve.service.worker import ACCEPT_PAUSE_S, QueueTimedWorker


class RecordingWorker(QueueTimedWorker):
    """The worker without its thread pool: accepted connections are only recorded."""

    def enqueue_req(self, conn: Any) -> None:
        self.accepted.append(conn)


def make_worker(listener: socket.socket, threads: int) -> RecordingWorker:
    cfg = Config()
    cfg.set("threads", threads)
    worker = RecordingWorker(1, os.getpid(), [listener], None, 30, cfg, None)
    worker.accepted = []
    worker.alive = True
    worker.poller = selectors.DefaultSelector()
    worker._accept_paused_until = 0.0
    return worker


def test_a_worker_with_a_connection_per_thread_pauses_accepting_then_resumes() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        worker = make_worker(listener, threads=4)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(6)]
        try:
            worker.set_accept_enabled(True)
            for _ in range(3):
                worker.accept(listener)
            assert worker._accepting and len(worker.accepted) == 3
            worker.accept(listener)  # the fourth connection: one per thread
            assert len(worker.accepted) == 4
            assert not worker._accepting
            worker.set_accept_enabled(True)  # what the main loop asks on every turn
            assert not worker._accepting, "accepting again before the pause ended"
            time.sleep(ACCEPT_PAUSE_S * 2)  # the pause's length is what is under test
            worker.set_accept_enabled(True)
            assert worker._accepting
            worker.accept(listener)  # beyond one per thread: one at a time, then a pause
            assert len(worker.accepted) == 5 and not worker._accepting
        finally:
            for client in clients:
                client.close()
            for conn in worker.accepted:
                conn.sock.close()
            worker.poller.close()


#: A process whose interpreter teardown takes a minute, whose last output is still in its
#: buffers or waits in an atexit callback, and whose gunicorn worker stopped with `status`.
EXITING_WORKER = """
import atexit, logging, sys, time
from flaskserve.service.worker import worker_exit

class Teardown:
    def __del__(self):
        time.sleep(60)

TEARDOWN = Teardown()
logging.basicConfig(stream=sys.stderr, format="%(message)s")
logging.getLogger("test").warning("logged last")
atexit.register(sys.stdout.write, ", at exit")
sys.stdout.write("printed last")

class Worker:
    exit_status = {status}

worker_exit(None, Worker())
sys.stdout.write(", then returned")
sys.stdout.flush()
"""


def test_a_stopped_worker_exits_with_its_status_at_once_after_flushing_its_output() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXITING_WORKER.format(status=3)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert time.monotonic() - started < 30, "the exit waited for the interpreter's teardown"
    assert done.returncode == 3
    assert done.stdout == "printed last, at exit"
    assert done.stderr == "logged last\n"
