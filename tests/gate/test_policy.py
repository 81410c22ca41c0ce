"""Each route declares what it needs where it is defined (`protocol.route_policy`); these pin
the surface that results, so a route opened or left undeclared by mistake shows up here."""

from __future__ import annotations

from flaskserve.app import create_app
from flaskserve.gate.grpc_guard import RPCS, access_of
from flaskserve.protocol.grpc import messages, streaming
from flaskserve.protocol.route_policy import ADMIN, MODEL, OPEN, policy_of
from flaskserve.settings import Settings


def surface(digits_repo) -> dict[str, set[str]]:
    """Each access -> the rules of flaskserve's app that need it."""
    app = create_app(Settings(repository=str(digits_repo)))
    found: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        declared = policy_of(app, rule.endpoint)
        assert declared is not None
        found.setdefault(declared.access, set()).add(rule.rule)
    return found


def test_only_health_probes_and_pages_are_open_and_operator_routes_need_an_admin_key(
    digits_repo,
) -> None:
    found = surface(digits_repo)
    assert found[OPEN] == {
        "/", "/assets/<path:filename>", "/static/<path:filename>", "/dashboard", "/docs",
        "/openapi.json", "/home/<name>", "/models/<name>", "/ping", "/v1/models/<name>", "/v2",
        "/v2/health/live", "/v2/health/ready", "/v2/models/<name>/ready",
        "/v2/models/<name>/versions/<version>/ready",
    }
    assert found[ADMIN] == {
        "/metrics", "/v2/models/stats", "/v2/repository/index",
        "/v2/repository/models/<name>/load", "/v2/repository/models/<name>/unload", "/v2/usage",
    }


def test_every_route_that_runs_a_model_needs_a_key_allowed_on_it_and_names_its_protocol(
    digits_repo,
) -> None:
    app = create_app(Settings(repository=str(digits_repo)))
    declared = {rule.rule: policy_of(app, rule.endpoint) for rule in app.url_map.iter_rules()}
    running = {rule: p for rule, p in declared.items() if p is not None and p.inference}
    assert {rule: (p.access, p.protocol, p.generates) for rule, p in running.items()} == {
        "/v2/models/<name>/infer": (MODEL, "v2", False),
        "/v2/models/<name>/versions/<version>/infer": (MODEL, "v2", False),
        "/v1/models/<name>:predict": (MODEL, "v1", False),
        "/invocations": (MODEL, "sagemaker", False),
        "/v1/embeddings": (MODEL, "openai", False),
        "/v1/chat/completions": (MODEL, "openai", True),
        "/v1/completions": (MODEL, "openai", True),
        "/v2/models/<name>/generate": (MODEL, "v2", True),
        "/v2/models/<name>/versions/<version>/generate": (MODEL, "v2", True),
        "/v2/models/<name>/generate_stream": (MODEL, "v2", True),
        "/v2/models/<name>/versions/<version>/generate_stream": (MODEL, "v2", True),
    }


def test_every_grpc_rpc_is_declared_and_an_unknown_one_needs_an_admin_key() -> None:
    # ModelStreamInfer is declared per request, as ModelInfer.
    assert set(RPCS) == set(messages.method_types()) - {streaming.RPC}
    assert access_of("ServerLive", None) == OPEN
    assert access_of("ModelInfer", "digits") == MODEL
    assert access_of("ModelStatistics", "digits") == MODEL
    assert access_of("ModelStatistics", None) == ADMIN
    assert access_of("SomethingNew", "digits") == ADMIN
