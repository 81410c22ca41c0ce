"""A local repository whose model.toml names `uri = "s3://..."` for its version folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from seaweed import upload_tree

from flaskserve.app import create_app
from flaskserve.models.digits import MODEL_TOML
from flaskserve.settings import Settings
from flaskserve.storage import open_mirror


def local_repository(tmp_path: Path, digits_repo: Path, uri: str) -> Path:
    """`digits` as usual, and `remote` whose folder holds only a model.toml pointing at `uri`."""
    root = tmp_path / "models"
    shutil.copytree(digits_repo / "digits", root / "digits")
    (root / "remote").mkdir()
    (root / "remote" / "model.toml").write_text(f'uri = "{uri}"\n{MODEL_TOML}')
    return root


def infer(client, name: str, features) -> dict:  # type: ignore[no-untyped-def]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(features.shape),
                        "data": features.ravel().tolist()}]}
    reply = client.post(f"/v2/models/{name}/infer", json=body)
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def test_a_model_whose_versions_live_in_s3_serves_beside_local_models(
    s3_server, s3_env, bucket, digits_repo, digits_data, tmp_path
):
    client = s3_server.client()
    upload_tree(client, digits_repo / "digits", bucket, "remote/digits")
    client.delete_object(Bucket=bucket, Key="remote/digits/model.toml")  # only versions in S3
    root = local_repository(tmp_path, digits_repo, f"s3://{bucket}/remote/digits")
    app = create_app(
        Settings(repository=str(root), cache_dir=str(tmp_path / "cache"), model_control=True)
    )
    http = app.test_client()

    features = digits_data[0][:10]
    local, remote = infer(http, "digits", features), infer(http, "remote", features)
    assert local["outputs"] == remote["outputs"]
    assert http.get("/v2/models/remote").get_json()["versions"] == ["1"]
    assert not (root / "remote" / "1").exists()  # the user's folder is left as it was

    version_1 = str(digits_repo / "digits/1/model.skops")
    client.upload_file(version_1, bucket, "remote/digits/2/model.skops")
    (root / "remote" / "model.toml").write_text(
        f'uri = "s3://{bucket}/remote/digits"\n# edited\n{MODEL_TOML}'
    )
    assert http.post("/v2/repository/models/remote/load").status_code == 200
    assert http.get("/v2/models/remote").get_json()["versions"] == ["2"]
    assert infer(http, "remote", features)["model_version"] == "2"
    mirror = open_mirror(str(root), tmp_path / "cache")
    assert "# edited" in (mirror.root / "remote" / "model.toml").read_text()


def test_an_empty_uri_stops_the_cli_with_one_line(s3_server, s3_env, bucket, digits_repo, tmp_path):
    root = local_repository(tmp_path, digits_repo, f"s3://{bucket}/nothing-here")
    result = subprocess.run(
        [sys.executable, "-m", "flaskserve", "models", str(root)],
        env={**os.environ, **s3_env}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert f"s3://{bucket}/nothing-here/ is empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_plain_local_folder_is_served_directly(digits_repo, tmp_path):
    assert open_mirror(str(digits_repo), tmp_path) is None
