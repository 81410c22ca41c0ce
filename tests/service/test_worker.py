"""The gthread worker's accept policy: a worker that holds as many connections as it has
threads pauses accepting, so a burst of connections reaches the other workers too."""

from __future__ import annotations

import os
import selectors
import socket
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
