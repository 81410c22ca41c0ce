"""What `flaskserve serve` says as it starts: progress while the default models are built, a
banner with the addresses and the models, no engine noise, and a warning naming the fix when a
repository would serve nothing."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from flaskserve.models import defaults
from flaskserve.serving.granian import IntendedThreads
from flaskserve.settings import Settings
from flaskserve.startup import banner, repository_problem


@pytest.mark.slow  # trains the digits model
def test_building_the_default_models_says_what_it_does(tmp_path, capsys):
    with threadpool_limits(1):
        defaults._build(tmp_path / "defaults", with_nlp=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "flaskserve: training the digits model on scikit-learn's bundled digits..."
    assert lines[1].startswith(
        "flaskserve: training the digits model on scikit-learn's bundled digits: held-out "
        "accuracy 0.9"
    )
    assert lines[1].endswith(" s)")


def test_a_step_prints_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with defaults.step("exporting", out) as done:
        done("exported")
    first, second = out.getvalue().splitlines()
    assert (first, second.rpartition(" (")[0]) == (
        "flaskserve: exporting...", "flaskserve: exporting: exported"
    )
    assert "\r" not in out.getvalue()


def test_the_banner_names_the_addresses_and_the_models():
    settings = Settings.from_env({}, port=5123, grpc_port=8001)
    assert banner(settings, ["digits", "minilm"]).splitlines() == [
        "flaskserve 0.1.0: serving digits, minilm",
        "  playground   http://127.0.0.1:5123/",
        "  API docs     http://127.0.0.1:5123/docs",
        "  V2 root      http://127.0.0.1:5123/v2",
        "  V2 gRPC      127.0.0.1:8001",
    ]
    public = settings.with_overrides(public_url="https://api.example.com/")
    assert "  playground   https://api.example.com/" in banner(public, []).splitlines()
    assert banner(settings, []).splitlines()[0].endswith("serving no models")


def test_granians_websocket_line_is_filtered_and_other_lines_are_not():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("_granian", logging.INFO, "", 0, message, None, None)

    noise = IntendedThreads()
    assert not noise.filter(record("Websockets are not supported on WSGI, ignoring"))
    assert noise.filter(record("Listening at: http://127.0.0.1:5000"))


def test_an_empty_repository_is_named_a_problem(tmp_path):
    assert "holds no model" in repository_problem(tmp_path)
    assert "flaskserve init DIR" in repository_problem(tmp_path)


def test_the_server_prints_the_banner_and_no_websocket_noise(start_server, digits_repo):
    server = start_server([str(digits_repo)])
    url = f"http://127.0.0.1:{server.port}"
    assert "flaskserve 0.1.0: serving digits\n" in server.log
    for line in (f"playground   {url}/", f"API docs     {url}/docs", f"V2 root      {url}/v2"):
        assert f"  {line}\n" in server.log
    assert "Websockets" not in server.log


def test_a_model_folder_given_as_the_repository_names_the_folder_to_serve(
    start_server, digits_model, tmp_path
):
    folder = tmp_path / "models" / "digits"
    shutil.copytree(digits_model, folder)
    server = start_server([str(folder)])
    assert (
        f"{folder} is one model's folder (it holds model.toml), not a repository: pass the "
        f"folder that contains it, {Path(folder).resolve().parent}"
    ) in server.log
    assert "serving no models" in server.log
