"""The gRPC front door of a worker's app: started beside it, sharing its data plane and gate."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Flask

from flaskserve.app import services_of
from flaskserve.settings import Settings

if TYPE_CHECKING:
    from flaskserve.protocol.grpc.server import GrpcServer

log = logging.getLogger("flaskserve")


def start_grpc(app: Flask, settings: Settings) -> GrpcServer | None:
    """The gRPC front door of `app` on `--grpc-port`, sharing its data plane, keys, limits and
    meter; None when the port is 0 or the app is not a flaskserve app."""
    if not settings.grpc_port:
        return None
    services = services_of(app)
    if services is None:
        log.warning("--grpc-port ignored: the app serves no flaskserve model repository")
        return None
    from flaskserve.gate.grpc_guard import GrpcGuard
    from flaskserve.protocol.grpc import server

    return server.start(
        services.dataplane,
        services.control,
        settings.host,
        settings.grpc_port,
        settings.threads,
        settings.max_request_bytes,
        services.statistics,
        GrpcGuard(services.gate),
    )
