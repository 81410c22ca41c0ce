"""X-Request-ID on every response, and `--log-format json` access lines from a real server."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import requests

from flaskserve.app import create_app
from flaskserve.gate.keys import add_key
from flaskserve.settings import Settings
from waiting import eventually

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}


@pytest.fixture(scope="module")
def client(digits_repo):
    return create_app(Settings(repository=str(digits_repo))).test_client()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("post", "/v2/models/digits/infer", 200),
        ("post", "/v2/models/nope/infer", 404),
        ("get", "/no/such/route", 404),
        ("post", "/v1/models/digits:predict", 400),
        ("get", "/metrics", 200),
        ("get", "/", 200),
    ],
)
def test_request_id_is_echoed_on_every_response(client, method, path, status) -> None:
    response = getattr(client, method)(path, json=BODY, headers={"X-Request-ID": "trace-42"})
    assert response.status_code == status
    assert response.headers["X-Request-ID"] == "trace-42"


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 200, "bad\u00e9"])
def test_a_missing_or_unusable_request_id_is_replaced(client, given) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    first = client.get("/v2/health/live", headers=headers).headers["X-Request-ID"]
    second = client.get("/v2/health/live", headers=headers).headers["X-Request-ID"]
    assert len(first) == 32 and first != second and first != given


def wait_for_line(server, predicate) -> dict:
    """Until the server logs a JSON line that `predicate` accepts; returns it, parsed."""

    def matching() -> dict | None:
        records = (json.loads(line) for line in server.log.splitlines() if line.startswith("{"))
        return next((record for record in records if predicate(record)), None)

    return eventually(matching, message=lambda: f"a matching JSON line is logged:\n{server.log}")


def assert_access_record(record: dict, method: str, path: str, status: int, model) -> None:
    assert {k: record[k] for k in ("method", "path", "status", "model")} == {
        "method": method, "path": path, "status": status, "model": model,
    }
    assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
    assert datetime.fromisoformat(record["timestamp"]).tzinfo is not None


def test_json_log_format_on_a_real_server(start_server, digits_repo) -> None:
    server = start_server([str(digits_repo), "--workers", "1", "--log-format", "json"])
    ok = requests.post(f"{server.url}/v2/models/digits/infer", json=BODY,
                       headers={"X-Request-ID": "req-json-1"}, timeout=10)
    assert ok.headers["X-Request-ID"] == "req-json-1"
    missing = requests.get(f"{server.url}/home/ada", timeout=10)
    generated = missing.headers["X-Request-ID"]

    record = wait_for_line(server, lambda r: r.get("request_id") == "req-json-1")
    assert_access_record(record, "POST", "/v2/models/digits/infer", 200, "digits")
    record = wait_for_line(server, lambda r: r.get("request_id") == generated)
    assert_access_record(record, "GET", "/home/ada", 200, None)
    lines = [line for line in server.log.splitlines() if line.strip()]
    assert all(json.loads(line) for line in lines), "every log line is one JSON object"
    assert any(json.loads(line).get("level") == "INFO" for line in lines)


def test_json_log_format_on_the_debug_server(start_server, digits_repo) -> None:
    server = start_server([str(digits_repo), "--debug", "--log-format", "json"])
    requests.post(f"{server.url}/v2/models/digits/infer", json=BODY,
                  headers={"X-Request-ID": "dbg-7"}, timeout=10)
    record = wait_for_line(server, lambda r: r.get("request_id") == "dbg-7")
    assert_access_record(record, "POST", "/v2/models/digits/infer", 200, "digits")


def test_the_served_access_line_names_the_key_that_made_the_request(
    start_server, digits_repo, tmp_path
) -> None:
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "alice")
    server = start_server([str(digits_repo), "--workers", "1", "--auth", str(keys_file)])
    answer = requests.post(f"{server.url}/v2/models/digits/infer", json=BODY,
                           headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert answer.status_code == 200
    assert requests.get(f"{server.url}/home/kim", timeout=10).status_code == 200
    server.wait_for_log('127.0.0.1 alice "POST /v2/models/digits/infer HTTP/1.1" 200 ')
    server.wait_for_log('127.0.0.1 - "GET /home/kim HTTP/1.1" 200 ')
    assert key not in server.log
