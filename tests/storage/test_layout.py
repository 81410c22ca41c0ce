"""S3 keys that cannot be laid out as files, and model names no folder can have.

S3 keys are names, not paths: `m/1` and `m/1/model.skops` may both exist, and a key segment may
be longer than a file name. Such a model is UNAVAILABLE with a reason naming the key, the others
serve, and a model name too long for a folder is unknown (404), as on disk.
"""

from __future__ import annotations

import http.client
import json

import pytest

from flaskserve.storage.s3_layout import S3Location, S3Object, layout_problem
from python_models import ECHO_PY, ECHO_TOML

LONG = "n" * 300  # longer than the 255 bytes a file or folder name may have
LONG_BUT_FINE = "f" * 250


def put_model(client, bucket: str, name: str, *extra: str) -> None:  # type: ignore[no-untyped-def]
    """An echo model at `prod/<name>/`, plus `extra` keys below its folder."""
    client.put_object(Bucket=bucket, Key=f"prod/{name}/model.toml", Body=ECHO_TOML.encode())
    client.put_object(Bucket=bucket, Key=f"prod/{name}/1/echo.py", Body=ECHO_PY.encode())
    for key in extra:
        client.put_object(Bucket=bucket, Key=f"prod/{name}/{key}", Body=b"stray")


def request(server, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def echo(server, name: str) -> int:  # type: ignore[no-untyped-def]
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    return request(server, "POST", f"/v2/models/{name}/infer", body)[0]


def test_keys_that_cannot_be_files_make_one_model_unavailable_and_the_server_still_starts(
    s3_server, s3_env, bucket, start_server
):
    client = s3_server.client()
    put_model(client, bucket, "good")
    put_model(client, bucket, "clash", "1")  # the object prod/clash/1 beside prod/clash/1/echo.py
    put_model(client, bucket, "deep", f"1/{'d' * 300}/weights.bin")
    put_model(client, bucket, LONG_BUT_FINE)
    put_model(client, bucket, LONG)
    server = start_server(
        [f"s3://{bucket}/prod", "--workers", "1", "--model-control"], env=s3_env
    )
    status, index = request(server, "POST", "/v2/repository/index", {})
    assert status == 200
    rows = {row["name"]: row for row in index}
    assert set(rows) == {"good", "clash", "deep", LONG_BUT_FINE}  # no folder could hold LONG
    assert rows["good"]["state"] == rows[LONG_BUT_FINE]["state"] == "READY"
    assert rows["clash"]["state"] == "UNAVAILABLE"
    assert f"s3://{bucket}/prod/clash/1 is an object and also a folder" in rows["clash"]["reason"]
    assert rows["deep"]["state"] == "UNAVAILABLE"
    assert "longer than the 255 bytes a file name can hold" in rows["deep"]["reason"]
    assert echo(server, "good") == echo(server, LONG_BUT_FINE) == 200
    status, error = request(server, "POST", "/v2/models/clash/infer", {"inputs": []})
    assert status == 503 and "is an object and also a folder" in error["error"]
    assert f"skipping the model folder s3://{bucket}/prod/{LONG[:64]}" in server.log

    client.delete_object(Bucket=bucket, Key="prod/clash/1")  # fixed in S3: a load serves it
    status, _ = request(server, "POST", "/v2/repository/models/clash/load")
    assert status == 200
    assert echo(server, "clash") == 200


def test_a_model_name_no_folder_can_have_is_unknown_on_an_s3_repository(
    s3_server, s3_env, bucket, start_server
):
    put_model(s3_server.client(), bucket, "good")
    server = start_server(
        [f"s3://{bucket}/prod", "--workers", "1", "--model-control"], env=s3_env
    )
    for name in [LONG, "y" * 256, "nul%00byte"]:
        for method, path in [
            ("POST", f"/v2/repository/models/{name}/load"),
            ("POST", f"/v2/repository/models/{name}/unload"),
            ("GET", f"/v2/models/{name}"),
            ("POST", f"/v2/models/{name}/infer"),
        ]:
            status, body = request(server, method, path)
            assert status == 404, (method, path[:80], status, body)
            assert "error" in body
    assert echo(server, "good") == 200


@pytest.mark.parametrize(
    ("rels", "words"),
    [
        (["model.toml", "1//model.skops"], "an empty, '.' or '..' segment"),
        (["model.toml", "1/./model.skops"], "an empty, '.' or '..' segment"),
        (["model.toml", "../other/model.toml"], "an empty, '.' or '..' segment"),
        (["model.toml", "1/model.skops", "1/model.skops/inner"], "is an object and also"),
        (["model.toml", ".s3-manifest.json"], "keeps for itself"),
        (["model.toml", ".unavailable"], "keeps for itself"),
        (["model.toml", "1/model.skops"], None),
    ],
    ids=["empty", "dot", "dot-dot", "file-and-folder", "manifest", "note", "fine"],
)
def test_keys_real_s3_allows_but_disk_does_not_are_named_in_the_reason(rels, words) -> None:
    """Keys SeaweedFS itself refuses (AWS S3 stores them) are checked without a server."""
    location = S3Location.parse("s3://bucket/prod")
    objects = [S3Object(f"prod/m/{rel}", rel, '"0"', 1) for rel in rels]
    problem = layout_problem(objects, location, "m")
    if words is None:
        assert problem is None
    else:
        assert problem is not None and words in problem and "s3://bucket/prod/m/" in problem
