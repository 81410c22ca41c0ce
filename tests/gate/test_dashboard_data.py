"""`GET /dashboard/data`: every worker's counters per model, and usage per key and minute that
only admin keys see in full."""

from __future__ import annotations

import pytest

from flaskserve.app import create_app
from flaskserve.gate.keys import add_key
from flaskserve.observability import dashboard
from flaskserve.settings import Settings
from flaskserve.web.examples import SEVEN

DIGITS = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SEVEN}]}


def test_without_keys_the_data_is_open_and_counts_requests(digits_repo) -> None:
    client = create_app(Settings(repository=str(digits_repo))).test_client()
    before = client.get("/dashboard/data").get_json()
    assert "digits" in before["models"]  # listed before its first request
    assert before["viewer"] is None and before["usage"]["metered"] is False
    for _ in range(3):
        assert client.post("/v2/models/digits/infer", json=DIGITS).status_code == 200
    assert client.post("/v2/models/digits/infer", json={"inputs": []}).status_code == 400
    after = client.get("/dashboard/data").get_json()
    now, then = after["models"]["digits"], before["models"]["digits"]
    assert now["requests"]["200"] - then["requests"].get("200", 0) == 3
    assert now["requests"]["400"] - then["requests"].get("400", 0) == 1
    assert sum(now["latency"]["buckets"]) == now["latency"]["count"]
    assert len(now["latency"]["buckets"]) == len(after["latency_bounds"]) + 1
    assert now["rows"] - then["rows"] == 3 and now["predicts"] - then["predicts"] == 3
    assert after["time"] >= before["time"]


@pytest.fixture
def keyed(digits_repo, tmp_path):
    keys = tmp_path / "keys.toml"
    made = {
        "ops": add_key(keys, "ops", admin=True),
        "alice": add_key(keys, "alice", models=("digits",)),
        "bob": add_key(keys, "bob", models=("other",)),
    }
    app = create_app(Settings(repository=str(digits_repo), auth=str(keys)))
    return app.test_client(), made


def usage_of(client, key: str) -> dict:
    response = client.get("/dashboard/data", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_with_keys_each_key_sees_only_its_own_usage_and_models(keyed) -> None:
    client, made = keyed
    assert client.get("/dashboard/data").status_code == 401
    assert client.get("/dashboard").status_code == 200  # the page itself is open
    for _ in range(2):
        response = client.post(
            "/v2/models/digits/infer",
            json=DIGITS,
            headers={"Authorization": f"Bearer {made['alice']}"},
        )
        assert response.status_code == 200
        response.close()  # usage is metered once the response is sent
    response = client.post(
        "/v2/models/digits/infer", json=DIGITS, headers={"X-API-Key": made["bob"]}
    )
    assert response.status_code == 403  # bob may not use digits, but the refusal is metered
    response.close()

    admin = usage_of(client, made["ops"])
    assert admin["usage"]["scope"] == "all" and admin["viewer"] == {"key": "ops", "admin": True}
    assert {row["key"] for row in admin["usage"]["minutes"]} == {"alice", "bob"}
    alice = usage_of(client, made["alice"])
    assert alice["usage"]["scope"] == "own"
    assert {row["key"] for row in alice["usage"]["minutes"]} == {"alice"}
    assert sum(row["requests"] for row in alice["usage"]["minutes"]) == 2
    assert set(alice["models"]) == {"digits"}
    bob = usage_of(client, made["bob"])
    assert {row["key"] for row in bob["usage"]["minutes"]} == {"bob"}
    assert bob["models"] == {}  # the one model served is not bob's


def test_generation_sources_add_fields_to_their_models(digits_repo) -> None:
    def tokens(totals):
        return {"digits": {"generation": {"tokens": 42}}, "secret": {"generation": {}}}

    dashboard.add_source(tokens)
    try:
        found = dashboard.snapshot(["digits"], allowed=["digits"])
        assert found["models"]["digits"]["generation"] == {"tokens": 42}
        assert "secret" not in found["models"]
    finally:
        dashboard._sources.remove(tokens)
