"""A worker hears the master's SIGTERM whenever it comes during its start-up (`serving.worker`).

Granian gives the worker's event loop its signal handlers before the app's `__rsgi_init__`
(where the worker starts listening) and runs the loop only after: a SIGTERM in between reached
uvloop's handler while its loop was not running, which drops it, and the master then waited
its whole graceful timeout for the worker (an idle two-worker server took a minute to stop).
Each case runs in a process of its own, as a worker does, signals being per process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: A worker's start-up in Granian's order, the master's SIGTERM arriving at `when`; prints
#: whether the loop's stop handler (Granian's) ran once the loop ran.
WORKER = """\
import asyncio, os, signal, sys
import uvloop
from flaskserve.serving import worker

class Reloader:
    def stop_grpc(self, grace_s):
        return None

    def request(self):
        return None

when = sys.argv[1]
read_fd = worker.listen()
if when == "building the app":
    os.kill(os.getpid(), signal.SIGTERM)
worker.watch(read_fd, Reloader(), 1.0)
loop = uvloop.new_event_loop()
stopped = asyncio.Event()
loop.add_signal_handler(signal.SIGTERM, stopped.set)  # Granian's set_loop_signals
if when == "between the loop's handlers and the app's init":
    os.kill(os.getpid(), signal.SIGTERM)
worker.engine_listening(loop)  # the app's __rsgi_init__
if when == "before the loop runs":
    os.kill(os.getpid(), signal.SIGTERM)


async def serve():
    if when == "while the loop runs":
        os.kill(os.getpid(), signal.SIGTERM)
    try:
        await asyncio.wait_for(stopped.wait(), 60)
    except TimeoutError:
        return "never stopped"
    return "stopped"

print(loop.run_until_complete(serve()), flush=True)
os._exit(0)
"""


@pytest.mark.parametrize(
    "when",
    [
        "building the app",
        "between the loop's handlers and the app's init",
        "before the loop runs",
        "while the loop runs",
    ],
)
def test_a_sigterm_during_start_up_stops_the_worker_once_its_loop_runs(when: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, when], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "stopped", done.stdout + done.stderr
