"""docs/grafana/flaskserve-dashboard.json: valid, ready to import, and querying only metrics
that a real flaskserve app exports on /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flaskserve.app import create_app
from flaskserve.gate.keys import add_key
from flaskserve.settings import Settings
from flaskserve.web.examples import SEVEN

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "flaskserve-dashboard.json"
DIGITS = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SEVEN}]}


#: The sample names of a family of each type, besides its own name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


@pytest.fixture(scope="module")
def exported(digits_repo, tmp_path_factory) -> set[str]:
    """The sample names of /metrics after one inference, with API keys (per-key counters)."""
    keys = tmp_path_factory.mktemp("grafana") / "keys.toml"
    admin = add_key(keys, "ops", admin=True)
    client = create_app(Settings(repository=str(digits_repo), auth=str(keys))).test_client()
    headers = {"Authorization": f"Bearer {admin}"}
    response = client.post("/v2/models/digits/infer", json=DIGITS, headers=headers)
    assert response.status_code == 200
    response.close()  # per-key usage is counted once the response is sent
    text = client.get("/metrics", headers=headers).get_data(as_text=True)
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    # A family is exported even before it has samples (the queue depth of an idle batcher).
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names |= {family} | {family + s for s in SUFFIXES.get(kind, ())}
    return names


def test_dashboard_is_importable_grafana_json(dashboard) -> None:
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    charts = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(charts) >= 10
    for panel in charts:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_every_metric_the_dashboard_queries_is_exported(dashboard, exported) -> None:
    names = {name for expr in queries(dashboard) for name in re.findall(r"flaskserve_\w+", expr)}
    assert len(names) >= 12
    missing = sorted(names - exported)
    assert not missing, f"queried but not exported: {missing}; exported: {sorted(exported)}"
    # Everything the panels are about, from traffic to the bill:
    for family in ("flaskserve_requests_total", "flaskserve_request_duration_seconds_bucket",
                   "flaskserve_batch_size_sum", "flaskserve_queue_depth",
                   "flaskserve_requests_in_flight", "flaskserve_key_requests_total",
                   "flaskserve_key_compute_seconds_total"):
        assert family in names, family
