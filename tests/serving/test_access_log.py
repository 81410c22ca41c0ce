"""The access line names the API key that made the request (its id, never its secret), in the
text and the JSON format, and `-` / null without one."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from flaskserve.app import create_app
from flaskserve.gate.keys import add_key
from flaskserve.serving.access_log import AccessLog
from flaskserve.settings import Settings

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
INFER = "/v2/models/digits/infer"


@pytest.fixture
def logged(digits_repo, tmp_path) -> Iterator[tuple[str, io.StringIO, logging.Logger]]:
    """A key for alice (digits only), and a logger whose lines land in a string."""
    key = add_key(tmp_path / "keys.toml", "alice", models=("digits",))
    lines = io.StringIO()
    logger = logging.Logger("access-test")
    logger.addHandler(logging.StreamHandler(lines))
    yield key, lines, logger


def through(log: AccessLog) -> Client:
    """A client of the app behind `log`, from 127.0.0.1 (as Flask's test client is)."""

    def from_loopback(environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_ADDR"] = "127.0.0.1"
        return log(environ, start_response)

    return Client(from_loopback)


def requests_of_alice_and_strangers(client: Client, key: str) -> None:
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.post(INFER, json=BODY, headers=bearer).status_code == 200
    assert client.post("/v2/repository/index", headers=bearer).status_code == 403  # not admin
    assert client.post(INFER, json=BODY).status_code == 401
    assert client.post(INFER, json=BODY, headers={"X-API-Key": key + "x"}).status_code == 401
    assert client.get("/v2/health/live", headers=bearer).status_code == 200  # an open route


def test_the_text_line_names_the_key_id_after_the_client_and_dash_without_one(
    digits_repo, tmp_path, logged
) -> None:
    key, lines, logger = logged
    app = create_app(Settings(repository=str(digits_repo), auth=str(tmp_path / "keys.toml")))
    requests_of_alice_and_strangers(through(AccessLog(app, logger)), key)
    starts = [line.rsplit('HTTP/1.1" ', 1)[0] for line in lines.getvalue().splitlines()]
    assert starts == [
        f'127.0.0.1 alice "POST {INFER} ',
        '127.0.0.1 alice "POST /v2/repository/index ',  # refused, yet made by alice's key
        f'127.0.0.1 - "POST {INFER} ',
        f'127.0.0.1 - "POST {INFER} ',
        '127.0.0.1 - "GET /v2/health/live ',  # an open route does not look at keys
    ]
    assert key not in lines.getvalue()


def test_the_json_line_carries_the_key_id_and_null_without_one(
    digits_repo, tmp_path, logged
) -> None:
    key, lines, logger = logged
    app = create_app(Settings(repository=str(digits_repo), auth=str(tmp_path / "keys.toml")))
    requests_of_alice_and_strangers(through(AccessLog(app, logger, json=True)), key)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [(r["path"], r["status"], r["key_id"]) for r in records] == [
        (INFER, 200, "alice"),
        ("/v2/repository/index", 403, "alice"),
        (INFER, 401, None),
        (INFER, 401, None),
        ("/v2/health/live", 200, None),
    ]
    assert key not in lines.getvalue()


def test_without_keys_every_line_says_no_key(digits_repo, logged) -> None:
    _, lines, logger = logged
    app = create_app(Settings(repository=str(digits_repo)))
    client = through(AccessLog(app, logger))
    assert client.post(INFER, json=BODY, headers={"X-API-Key": "anything"}).status_code == 200
    assert lines.getvalue().startswith(f'127.0.0.1 - "POST {INFER} HTTP/1.1" 200 ')
