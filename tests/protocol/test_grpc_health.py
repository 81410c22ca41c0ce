"""grpc.health.v1.Health on the gRPC port, as Kubernetes' `grpc` probe and load balancers call
it: raw bytes on a plain channel (no flaskserve message classes), so the test pins the wire
format of the published health.proto, not our own declaration of it."""

from __future__ import annotations

import shutil

import grpc
import pytest
import requests

from python_models import python_toml, write_python_model
from servers import free_port
from waiting import eventually

pytestmark = pytest.mark.timeout(300)

CHECK = "/grpc.health.v1.Health/Check"
#: HealthCheckRequest{service=""} and {service="inference.GRPCInferenceService"}.
WHOLE_SERVER = b""
INFERENCE = b"\n\x1einference.GRPCInferenceService"
#: HealthCheckResponse{status=SERVING} and {status=NOT_SERVING}.
SERVING = b"\x08\x01"
NOT_SERVING = b"\x08\x02"

BROKEN_TOML = python_toml("broken:Broken", {"x": ("FP32", [-1])}, {"y": ("FP32", [-1])})
BROKEN_PY = """\
class Broken:
    def __init__(self):
        raise RuntimeError("this model never loads")
"""


def check(channel: grpc.Channel, request: bytes) -> bytes:
    call = channel.unary_unary(CHECK, request_serializer=None, response_deserializer=None)
    return call(request, timeout=10)


def wait_for_answer(channel: grpc.Channel, request: bytes, timeout: float = 120) -> bytes:
    """The first answer once some worker has started its gRPC server."""

    def answer() -> bytes | None:
        try:
            return check(channel, request)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return None

    return eventually(answer, timeout=timeout, message="a worker starts its gRPC server")


def test_health_check_follows_readiness_and_refuses_unknown_services(
    start_server, tmp_path, digits_model
):
    shutil.copytree(digits_model, tmp_path / "digits")
    write_python_model(tmp_path, "broken", BROKEN_TOML, BROKEN_PY)
    grpc_port = free_port()
    server = start_server(
        [str(tmp_path), "--workers", "1", "--grpc-port", str(grpc_port), "--model-control"],
        timeout=180,
    )
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        # A model failed to load: not ready, over HTTP and to the health check alike.
        assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 503
        assert wait_for_answer(channel, WHOLE_SERVER) == NOT_SERVING
        assert check(channel, INFERENCE) == NOT_SERVING

        with pytest.raises(grpc.RpcError) as unknown:
            check(channel, b"\n\x0bno.such.Svc")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no.such.Svc" in unknown.value.details()

        # Unloaded on purpose, it no longer counts: ready, and SERVING, with no key needed.
        unload = requests.post(f"{server.url}/v2/repository/models/broken/unload", timeout=30)
        assert unload.status_code == 200, unload.text
        assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
        assert check(channel, WHOLE_SERVER) == SERVING
        assert check(channel, INFERENCE) == SERVING
