"""Which routes need which key, over every front door, on the app itself."""

from __future__ import annotations

import os
import subprocess

import pytest

from flaskserve.app import create_app
from flaskserve.gate.keys import add_key
from flaskserve.protocol.route_policy import open_route
from flaskserve.settings import Settings
from raw_http import exchange
from servers import FLASKSERVE, Server, free_port, stop_process_group

ROW = [0.0] * 64


@pytest.fixture(scope="module")
def gated(digits_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth")
    keys_file = folder / "keys.toml"
    keys = {
        "digits_only": add_key(keys_file, "digits_only", models=("digits",)),
        "other_only": add_key(keys_file, "other_only", models=("other",)),
        "ops": add_key(keys_file, "ops", admin=True),
    }
    app = create_app(Settings(repository=str(digits_repo), auth=str(keys_file)))
    return app.test_client(), keys


def v2_body() -> dict:
    return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "path",
    [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/digits/ready",
        "/v2/models/digits/versions/1/ready",
        "/v1/models/digits",
        "/ping",
        "/home/kim",
    ],
)
def test_health_and_probe_routes_stay_open(gated, path) -> None:
    client, _ = gated
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", "/v2/models/digits/infer", {"json": v2_body()}),
        ("post", "/v2/models/digits/versions/1/infer", {"json": v2_body()}),
        ("post", "/v1/models/digits:predict", {"json": {"instances": [ROW]}}),
        ("post", "/invocations", {"json": {"instances": [ROW]}}),
        ("get", "/v2/models/digits", {}),
    ],
)
def test_every_model_route_needs_a_key_allowed_on_the_model(gated, method, path, kwargs) -> None:
    client, keys = gated
    call = getattr(client, method)
    refused = call(path, **kwargs)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in refused.get_json()
    wrong_model = call(path, headers=auth(keys["other_only"]), **kwargs)
    assert wrong_model.status_code == 403
    assert "may not use model 'digits'" in wrong_model.get_json()["error"]
    assert call(path, headers=auth(keys["digits_only"]), **kwargs).status_code == 200
    assert call(path, headers={"X-API-Key": keys["ops"]}, **kwargs).status_code == 200


def test_sagemaker_target_model_header_is_checked_against_the_key(gated) -> None:
    client, keys = gated
    response = client.post(
        "/invocations",
        json={"instances": [ROW]},
        headers={**auth(keys["digits_only"]), "X-Amzn-SageMaker-Target-Model": "other"},
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v2/repository/index"),
        ("post", "/v2/repository/models/digits/unload"),
        ("get", "/v2/usage"),
        ("get", "/metrics"),
    ],
)
def test_operator_routes_need_an_admin_key(gated, method, path) -> None:
    client, keys = gated
    call = getattr(client, method)
    assert call(path).status_code == 401
    forbidden = call(path, headers=auth(keys["digits_only"]))
    assert forbidden.status_code == 403
    assert "admin" in forbidden.get_json()["error"]
    if path.endswith("unload"):
        return  # unloading would take the model away from the other tests
    assert call(path, headers=auth(keys["ops"])).status_code == 200


def test_an_unknown_or_malformed_key_is_401_and_unknown_routes_stay_404(gated) -> None:
    client, keys = gated
    for headers in (
        {"Authorization": "Bearer fsk_unknown"},
        {"Authorization": "Basic " + keys["ops"]},
        {"X-API-Key": keys["ops"] + "x"},
    ):
        response = client.post("/v2/models/digits/infer", json=v2_body(), headers=headers)
        assert response.status_code == 401, headers
    assert client.get("/no/such/route").status_code == 404


def test_without_auth_every_route_is_open(digits_repo) -> None:
    client = create_app(Settings(repository=str(digits_repo))).test_client()
    assert client.post("/v2/models/digits/infer", json=v2_body()).status_code == 200
    assert client.post("/v2/repository/index").status_code == 200
    usage = client.get("/v2/usage")
    assert usage.status_code == 404 and "--usage-db" in usage.get_json()["error"]


@pytest.fixture(scope="module")
def keyed_server(digits_repo, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keyed") / "keys.toml"
    add_key(keys_file, "alice")
    server = Server([str(digits_repo), "--workers", "1", "--auth", str(keys_file)])
    yield server
    server.stop()


@pytest.mark.parametrize(
    "framing", ["Content-Length: 1000", "Transfer-Encoding: chunked"], ids=["sized", "chunked"]
)
@pytest.mark.parametrize(
    "credentials", ["", "\nAuthorization: Bearer fsk_not-a-key"], ids=["no-key", "bad-key"]
)
@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v1/embeddings"])
def test_a_request_without_a_valid_key_is_refused_before_its_body(
    keyed_server, framing, credentials, path
) -> None:
    head = f"POST {path} HTTP/1.1\nHost: 127.0.0.1\n{framing}{credentials}"
    # The body never comes: a server reading it before checking the key would wait for it.
    # (The OpenAI route names its model in the body, and its errors come in OpenAI's shape.)
    status, answer = exchange(keyed_server.port, head, timeout=5)
    error = answer["error"] if isinstance(answer["error"], str) else answer["error"]["message"]
    assert status == 401 and "API key" in error


@pytest.mark.parametrize("how", ["env", "flag"])
def test_an_empty_auth_setting_stops_serve_at_start(digits_repo, how) -> None:
    args, env = [str(digits_repo), "--port", str(free_port())], dict(os.environ)
    if how == "env":
        env["FLASKSERVE_AUTH"] = ""
    else:
        args += ["--auth", ""]
    process = subprocess.Popen(
        [*FLASKSERVE, "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop_process_group(process)
        pytest.fail("flaskserve serve started with an empty FLASKSERVE_AUTH")
    assert process.returncode != 0
    assert b"FLASKSERVE_AUTH is set but empty" in output


def test_routes_an_application_adds_need_a_key_unless_declared_open(digits_repo, tmp_path) -> None:
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "alice", models=("digits",))
    app = create_app(Settings(repository=str(digits_repo), auth=str(keys_file)))

    @app.get("/mine")
    def mine() -> str:
        return "mine"

    @app.get("/static/notes.txt")  # under a path prefix flaskserve's own assets use
    def notes() -> str:
        return "notes"

    @app.get("/about")
    @open_route
    def about() -> str:
        return "about"

    client = app.test_client()
    for path in ("/mine", "/static/notes.txt"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=auth(key)).status_code == 200, path
    assert client.get("/about").status_code == 200
    assert client.get("/assets/playground.js").status_code == 200  # flaskserve's own assets
