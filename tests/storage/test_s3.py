"""`flaskserve serve s3://...` against a real S3 server (SeaweedFS), end to end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from corrupting_proxy import FLIP, PASS, TRUNCATE
from seaweed import OUTSIDER_KEY, OUTSIDER_SECRET, client_env, upload_tree

from flaskserve.app import create_app
from flaskserve.settings import Settings
from waiting import eventually

FLASKSERVE = [sys.executable, "-m", "flaskserve"]


def infer_body(features) -> dict:  # type: ignore[no-untyped-def]
    return {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(features.shape),
             "data": features.ravel().tolist()}
        ]
    }


def outputs(body: dict) -> dict:
    return {output["name"]: output["data"] for output in body["outputs"]}


def add_version(repo: Path, version: int, tmp_path: Path) -> Path:
    """A copy of `repo` whose digits model also has `version` (the same classifier file)."""
    copy = tmp_path / f"with-v{version}"
    shutil.copytree(repo, copy)
    shutil.copytree(copy / "digits" / "1", copy / "digits" / str(version))
    return copy


def served_versions(url: str) -> list[str]:
    return requests.get(f"{url}/v2/models/digits", timeout=10).json()["versions"]


def wait_for_version(url: str, version: str, body: dict) -> None:
    """Until every worker answers with `version`: eight answers in a row (the other workers
    replay the load within ~0.2 s)."""
    seen: list[str] = []

    def settled() -> bool:
        reply = requests.post(f"{url}/v2/models/digits/infer", json=body, timeout=10).json()
        seen.append(reply["model_version"])
        return seen[-8:] == [version] * 8

    eventually(settled, interval=0.05,
               message=lambda: f"the server settles on version {version} (last: {seen[-8:]})")


def mirror_snapshots(cache: Path, bucket: str) -> list[str]:
    return sorted(
        p.name for p in (cache / "s3" / bucket).glob("*/.snapshots/*") if p.is_dir()
    )


def test_serves_the_same_predictions_from_s3_as_from_disk_and_loads_a_new_version(
    s3_server, s3_env, bucket, digits_repo, digits_data, start_server, tmp_path
):
    client = s3_server.client()
    upload_tree(client, digits_repo, bucket, "prod")
    server = start_server(
        [f"s3://{bucket}/prod", "--workers", "2", "--model-control"],
        env=s3_env, ready_path="/v2/health/ready",
    )
    features = digits_data[0][:20]
    body = infer_body(features)
    from_s3 = requests.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=10)
    disk = create_app(Settings(repository=str(digits_repo))).test_client()
    from_disk = disk.post("/v2/models/digits/infer", json=body)
    assert from_s3.status_code == from_disk.status_code == 200
    assert outputs(from_s3.json()) == outputs(from_disk.get_json())
    assert from_s3.json()["model_version"] == "1"
    # Progress on stderr: plain lines, as the server's output is a log file, not a terminal.
    log = server.log
    assert f"s3://{bucket}/prod/digits/: downloading " in log
    assert re.search(rf"s3://{bucket}/prod/digits/: [\d.]+ (B|KiB|MiB) in [\d.]+ s\n", log), log
    assert "\r" not in log  # no bar's carriage returns piled up in the log

    server.wait_for_log("model digits version 1 is ready", count=2)  # both workers booted
    upload_tree(client, add_version(digits_repo, 2, tmp_path), bucket, "prod")
    assert served_versions(server.url) == ["1"]  # nothing changes until a load
    loaded = requests.post(f"{server.url}/v2/repository/models/digits/load", timeout=30)
    assert loaded.status_code == 200, loaded.text
    wait_for_version(server.url, "2", body)
    assert served_versions(server.url) == ["2"]
    reply = requests.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=10).json()
    assert outputs(reply) == outputs(from_disk.get_json())


@pytest.mark.parametrize(
    ("location", "credentials", "message"),
    [
        ("s3://no-such-bucket-here/prod", None, "bucket 'no-such-bucket-here' does not exist"),
        ("s3://{bucket}/empty", None, "is empty: no objects under that prefix"),
        ("s3://{bucket}/prod", (OUTSIDER_KEY, OUTSIDER_SECRET), "access denied to s3://"),
        ("s3://{bucket}/prod/digits", None, "holds no model: expected <model>/model.toml"),
    ],
    ids=["missing-bucket", "empty-prefix", "access-denied", "model-folder-not-repository"],
)
def test_serve_explains_an_unusable_s3_location_in_one_line(
    s3_server, s3_env, bucket, digits_repo, location, credentials, message
):
    upload_tree(s3_server.client(), digits_repo, bucket, "prod")
    env = {**os.environ, **s3_env}
    if credentials:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = credentials
    result = subprocess.run(
        [*FLASKSERVE, "serve", location.format(bucket=bucket), "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", [FLIP, TRUNCATE])
def test_a_corrupted_download_stops_the_server_before_it_serves(
    s3_server, s3_env, bucket, digits_repo, proxy, mode
):
    upload_tree(s3_server.client(), digits_repo, bucket, "prod")
    proxy.mode, proxy.target = mode, "/1/model.skops"
    env = {**os.environ, **client_env(proxy.endpoint)}
    result = subprocess.run(
        [*FLASKSERVE, "serve", f"s3://{bucket}/prod", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proxy.damaged >= 1
    assert result.returncode == 1, result.stderr
    assert "the download does not match S3" in result.stderr
    assert "Traceback" not in result.stderr
    cache = Path(os.environ["FLASKSERVE_CACHE_DIR"])
    assert mirror_snapshots(cache, bucket) == []  # nothing half-written is left to serve
    assert not list((cache / "s3" / bucket).glob("*/digits"))


def test_a_corrupted_new_version_is_rejected_and_the_old_one_keeps_serving(
    s3_server, bucket, digits_repo, digits_data, proxy, start_server, tmp_path
):
    client = s3_server.client()
    upload_tree(client, digits_repo, bucket, "prod")
    server = start_server(
        [f"s3://{bucket}/prod", "--workers", "1", "--model-control"],
        env=client_env(proxy.endpoint), ready_path="/v2/health/ready",
    )
    body = infer_body(digits_data[0][:5])
    upload_tree(client, add_version(digits_repo, 2, tmp_path), bucket, "prod")
    proxy.mode, proxy.target = FLIP, "/2/model.skops"

    rejected = requests.post(f"{server.url}/v2/repository/models/digits/load", timeout=30)
    assert rejected.status_code == 502
    assert "the download does not match S3" in rejected.json()["error"]
    assert served_versions(server.url) == ["1"]
    reply = requests.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=10)
    assert reply.status_code == 200 and reply.json()["model_version"] == "1"

    proxy.mode = PASS
    loaded = requests.post(f"{server.url}/v2/repository/models/digits/load", timeout=30)
    assert loaded.status_code == 200, loaded.text
    assert served_versions(server.url) == ["2"]
