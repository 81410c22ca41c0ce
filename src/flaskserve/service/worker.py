"""gunicorn's threaded worker, telling the app how long each request waited for a thread.

In a gthread worker the queue that grows under overload is not in the app: it is the thread
pool's queue of connections with a request ready, in front of `--threads` busy threads. Nothing
in the WSGI environ says how long a request sat there, so this worker stamps each connection
when it is queued and, when a thread picks it up, leaves the wait in a thread-local for the
app (`queue_wait()`). The app answers a request that waited longer than `--max-queue-ms` with
503 + Retry-After at once, which costs microseconds, so a backlog drains quickly instead of
every request in it being served late. Requests that waited less are served as usual.

`enqueue_req` and `handle` are the gthread worker's own hooks (gunicorn 22 to 27).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from flaskserve.service import metering

_local = threading.local()


def queue_wait() -> tuple[float, float] | None:
    """(seconds the current request waited for a thread, monotonic time it was queued), or
    None outside this worker."""
    return getattr(_local, "wait", None)


class QueueTimedWorker(ThreadWorker):  # type: ignore[misc]
    def enqueue_req(self, conn: Any) -> None:
        conn.flaskserve_queued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        queued_at = getattr(conn, "flaskserve_queued_at", None)
        if queued_at is None:
            _local.wait = None
        else:
            _local.wait = (time.monotonic() - queued_at, queued_at)
        return super().handle(conn)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook, in the worker after its last request: write the usage it still holds."""
    metering.close_all()
