"""The command line: init writes a servable repository, models prints signatures, serve listens."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from flaskserve.cli import main, sagemaker_overrides
from flaskserve.settings import Settings


@pytest.mark.slow  # `init` trains the digits model
def test_init_writes_a_repository_that_models_lists(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["init", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "repo" / "digits" / "model.toml").is_file()
    assert (tmp_path / "repo" / "digits" / "1" / "model.skops").is_file()
    listed = runner.invoke(main, ["models", str(tmp_path / "repo")])
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()[:2]
    assert header.split() == ["MODEL", "VERSION", "STATE", "PLATFORM", "INPUTS", "OUTPUTS"]
    assert row.split()[:4] == ["digits", "1", "READY", "sklearn_LogisticRegression"]
    assert "input FP32 [-1, 64]" in row
    assert "label INT64 [-1], probabilities FP32 [-1, 10]" in row
    again = runner.invoke(main, ["init", str(tmp_path / "repo")])
    assert again.exit_code != 0 and "already exists" in again.output


def test_models_explains_why_a_model_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "model.toml").write_text('runtime = "sklearn"\n')
    (tmp_path / "broken" / "1" / "model.skops").write_bytes(b"not a zip file")
    result = CliRunner().invoke(main, ["models", str(tmp_path)])
    assert "UNAVAILABLE" in result.output
    assert "broken v1: model.skops is not a readable skops file" in result.output


def test_serve_rejects_a_missing_repository() -> None:
    result = CliRunner().invoke(main, ["serve", "/no/such/folder"])
    assert result.exit_code != 0
    assert "is not a folder" in result.output


def test_serve_refuses_a_port_another_server_listens_on(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(tmp_path), "--port", str(port)])
    assert result.exit_code != 0
    assert f"127.0.0.1:{port} is already in use" in result.output
    assert "choose another --port" in result.output


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    environ = {"FLASKSERVE_PORT": "6000", "FLASKSERVE_WORKERS": "3", "FLASKSERVE_DEBUG": "true"}
    settings = Settings.from_env(environ, port=7000)
    assert (settings.port, settings.workers, settings.debug, settings.host) == (
        7000,
        3,
        True,
        "127.0.0.1",
    )


def test_sagemaker_containers_listen_on_8080_or_the_bound_port(tmp_path: Path) -> None:
    plain = Settings()
    assert sagemaker_overrides(plain, {}, False, model_dir=str(tmp_path / "none")) == plain
    bound = sagemaker_overrides(
        plain, {"SAGEMAKER_BIND_TO_PORT": "9090"}, False, model_dir=str(tmp_path / "none")
    )
    assert (bound.host, bound.port) == ("0.0.0.0", 9090)
    (tmp_path / "ml" / "digits").mkdir(parents=True)
    inside = sagemaker_overrides(plain, {}, False, model_dir=str(tmp_path / "ml"))
    assert (inside.port, inside.repository) == (8080, str(tmp_path / "ml"))
    explicit = sagemaker_overrides(
        plain, {"SAGEMAKER_BIND_TO_PORT": "9090"}, True, model_dir=str(tmp_path / "none")
    )
    assert explicit.port == 5000


def test_serve_without_a_repository_serves_the_embedded_digits_model(
    start_server, digits_data
) -> None:
    server = start_server(["--workers", "1"], timeout=180)  # it trains the model first
    metadata = requests.get(f"{server.url}/v2/models/digits", timeout=5).json()
    assert metadata["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [-1]}
    features, labels = digits_data
    body = {
        "inputs": [
            {"name": "input", "shape": [5, 64], "datatype": "FP32", "data": features[:5].tolist()}
        ],
        "outputs": [{"name": "label"}],
    }
    answer = requests.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=10).json()
    assert answer["outputs"][0]["data"] == labels[:5].tolist()


def test_debug_serves_with_the_flask_dev_server_and_logs_each_request(start_server, digits_repo):
    server = start_server([str(digits_repo), "--debug"])
    assert requests.get(f"{server.url}/home/ada", timeout=5).text == "hello,ada"
    wanted = '"GET /home/ada HTTP/1.1" 200'
    server.wait_for_log(wanted)
    line = next(entry for entry in server.log.splitlines() if wanted in entry)
    assert line.endswith("ms")
    assert "Debugger is active" in server.log


USER_APP = """\
from flaskserve import ModelServer, Tensor

server = ModelServer()


@server.model("negate", inputs=[Tensor("x", "INT32", [-1])], outputs=[Tensor("y", "INT32", [-1])])
def negate(x):
    return -x


@server.app.route("/about")
def about():
    return {"team": "ml"}
"""


def test_serve_app_runs_a_user_model_server_on_the_engine(start_server, tmp_path: Path) -> None:
    (tmp_path / "userapp.py").write_text(USER_APP)
    server = start_server(
        ["--app", "userapp:server", "--workers", "1", "--max-request-bytes", "500"], cwd=tmp_path
    )
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, -2]}]}
    response = requests.post(f"{server.url}/v2/models/negate/infer", json=body, timeout=5)
    assert response.json()["outputs"][0]["data"] == [-1, 2]
    assert requests.get(f"{server.url}/about", timeout=5).json() == {"team": "ml"}
    too_big = requests.post(f"{server.url}/v2/models/negate/infer", data=b"x" * 600, timeout=5)
    assert too_big.status_code == 413, "CLI flags reach the user's ModelServer"
