"""Starting and stopping the gRPC server of one process.

Each worker runs its own gRPC server, created after the fork (gRPC's threads and
sockets do not survive one), all bound to the same port with SO_REUSEPORT so the kernel spreads
connections over the workers as it does for HTTP.

Overload: the server runs `WAITING_CALLS` handler threads beyond `--threads`, for inference
calls waiting (at most `--max-queue-ms`) for an admission slot (`gate.grpc_guard`) and for
cheap calls (health, metadata) meanwhile. A call beyond all of them is refused by gRPC itself
with `RESOURCE_EXHAUSTED` before it takes a thread (`maximum_concurrent_rpcs`), so no queue
grows behind the threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from flaskserve.core.context import StatisticsReport
from flaskserve.core.coordination import RepositoryControl
from flaskserve.core.dataplane import DataPlane
from flaskserve.protocol.grpc import health
from flaskserve.protocol.grpc.servicer import Hooks, InferenceServicer, open_hooks

#: Handler threads beyond `threads` (started as needed): calls waiting for an admission slot,
#: and cheap calls. A burst of a few hundred short calls on one worker is served, not refused
#: (tests/protocol/test_grpc.py sends 200 at once).
WAITING_CALLS = 256


class GrpcServer:
    """A started gRPC server; `stop` refuses new calls at once and lets running ones finish."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self._stopped: threading.Event | None = None
        self._lock = threading.Lock()

    def stop(self, grace: float) -> threading.Event:
        """Begin a graceful stop (idempotent); the event is set once every call has ended or
        `grace` seconds have passed, whichever is first."""
        with self._lock:
            if self._stopped is None:
                self._stopped = self._server.stop(grace)
            return self._stopped


def start(
    dataplane: DataPlane,
    control: RepositoryControl,
    host: str,
    port: int,
    threads: int,
    max_message_bytes: int,
    statistics: StatisticsReport,
    hooks: Hooks = open_hooks,
) -> GrpcServer:
    """Serve `inference.GRPCInferenceService` on host:port with `threads` + `WAITING_CALLS`
    handler threads, refusing calls beyond them at once."""
    handlers = threads + WAITING_CALLS
    server = grpc.server(
        ThreadPoolExecutor(max_workers=handlers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=handlers,
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ],
    )
    servicer = InferenceServicer(dataplane, control, statistics, hooks)
    server.add_generic_rpc_handlers((servicer.handler(),))
    server.add_generic_rpc_handlers((health.handler(dataplane.repository.is_ready),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    server.start()
    return GrpcServer(server)
