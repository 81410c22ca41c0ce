"""Model control: load and unload are refused unless the server was started to allow them."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import requests

from flaskserve.app import create_app
from flaskserve.cli import is_loopback, open_model_control_warning
from flaskserve.gate.keys import add_key
from flaskserve.settings import Settings

LOAD = "/v2/repository/models/digits/load"
UNLOAD = "/v2/repository/models/digits/unload"
READY = "/v2/models/digits/ready"


def post(url: str, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url, headers=headers, timeout=30)


def test_a_server_started_without_flags_refuses_load_and_unload_and_keeps_serving(
    start_server, digits_repo
) -> None:
    server = start_server([str(digits_repo), "--workers", "1"])
    for path, action in ((UNLOAD, "unload"), (LOAD, "load")):
        refused = post(server.url + path)
        assert refused.status_code == 403
        assert refused.headers["Content-Type"] == "application/json"
        error = refused.json()["error"]
        assert f"cannot {action} model 'digits'" in error
        assert "--model-control" in error and "--auth" in error
    assert requests.get(server.url + READY, timeout=5).status_code == 200
    index = requests.post(f"{server.url}/v2/repository/index", timeout=5)
    assert index.status_code == 200
    assert [row["state"] for row in index.json()] == ["READY"]


def test_with_model_control_unload_and_load_change_what_is_served(
    start_server, digits_repo
) -> None:
    server = start_server([str(digits_repo), "--workers", "1", "--model-control"])
    assert post(server.url + UNLOAD).status_code == 200
    assert requests.get(server.url + READY, timeout=5).status_code == 503
    assert post(server.url + LOAD).status_code == 200
    assert requests.get(server.url + READY, timeout=5).status_code == 200
    assert "MODEL CONTROL IS OPEN" not in server.log  # bound to 127.0.0.1


def test_with_auth_an_admin_key_may_unload_and_load_and_another_key_may_not(
    start_server, digits_repo, tmp_path
) -> None:
    keys_file = tmp_path / "keys.toml"
    user = add_key(keys_file, "user")
    admin = add_key(keys_file, "ops", admin=True)
    server = start_server([str(digits_repo), "--workers", "1", "--auth", str(keys_file)])
    for path in (UNLOAD, LOAD):
        refused = post(server.url + path, user)
        assert refused.status_code == 403
        assert "admin" in refused.json()["error"]
    assert requests.get(server.url + READY, timeout=5).status_code == 200
    assert post(server.url + UNLOAD, admin).status_code == 200
    assert requests.get(server.url + READY, timeout=5).status_code == 503
    assert post(server.url + LOAD, admin).status_code == 200
    assert requests.get(server.url + READY, timeout=5).status_code == 200


@pytest.mark.parametrize(("value", "status"), [("1", 200), ("0", 403)])
def test_the_environment_variable_turns_model_control_on(digits_repo, value, status) -> None:
    settings = Settings.from_env({"FLASKSERVE_MODEL_CONTROL": value}, repository=str(digits_repo))
    client = create_app(settings).test_client()
    assert client.post(UNLOAD).status_code == status


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        (Settings(host="0.0.0.0", model_control=True), True),
        (Settings(host="::", model_control=True), True),
        (Settings(host="10.0.0.5", model_control=True), True),
        (Settings(host="models.internal", model_control=True), True),
        (Settings(host="0.0.0.0", model_control=True, auth="keys.toml"), False),
        (Settings(host="0.0.0.0"), False),
        (Settings(host="127.0.0.1", model_control=True), False),
        (Settings(host="127.0.0.2", model_control=True), False),
        (Settings(host="::1", model_control=True), False),
        (Settings(host="localhost", model_control=True), False),
    ],
)
def test_open_model_control_is_warned_about_only_where_other_hosts_can_use_it(
    settings, warned
) -> None:
    warning = open_model_control_warning(settings)
    assert (warning is not None) == warned
    if warning is not None:
        assert f"{settings.host}:{settings.port}" in warning and "--auth" in warning


def test_is_loopback_reads_bracketed_ipv6() -> None:
    assert is_loopback("[::1]") and not is_loopback("[::]")


@pytest.mark.parametrize(
    ("extra", "warned"),
    [([], True), (["--auth", "keys.toml"], False)],
)
def test_serve_logs_the_warning_on_stderr_before_it_starts(extra, warned) -> None:
    """The port is taken, so `serve` stops at its port check, after the warning and before
    anything listens: the test never opens a non-loopback listener."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "flaskserve",
                "serve",
                "--model-control",
                "--host",
                "0.0.0.0",
                "--port",
                str(port),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0 and "already in use" in result.stderr
    assert ("WARNING" in result.stderr and "MODEL CONTROL IS OPEN" in result.stderr) == warned
