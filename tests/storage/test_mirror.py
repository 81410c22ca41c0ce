"""The S3 mirror in-process against SeaweedFS: multipart ETags, reuse, removal, GC of partials."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from seaweed import upload_tree

from flaskserve.core.errors import ModelNotFound
from flaskserve.core.repository import ModelRepository
from flaskserve.runtimes.registry import load_model
from flaskserve.storage import StorageError, open_mirror
from flaskserve.storage.s3_layout import S3Location
from flaskserve.storage.verify import multipart_etag, parse_etag, uniform_part_sizes

MIB = 1024 * 1024


def multipart_upload(client, bucket: str, key: str, data: bytes, cuts: list[int]) -> str:  # type: ignore[no-untyped-def]
    """Upload `data` in parts ending at `cuts`; returns the ETag S3 computed."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    parts, start = [], 0
    for number, end in enumerate([*cuts, len(data)], start=1):
        part = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number,
            Body=data[start:end],
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
        start = end
    done = client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return str(done["ETag"])


@pytest.mark.parametrize(
    "cuts", [[5 * MIB, 10 * MIB], [6 * MIB, 11 * MIB]], ids=["equal-parts", "unequal-parts"]
)
def test_multipart_objects_are_verified_against_their_etag(
    s3_server, s3_env, bucket, digits_repo, tmp_path, cuts
):
    client = s3_server.client()
    upload_tree(client, digits_repo, bucket, "prod")
    data = os.urandom(12 * MIB)
    etag = multipart_upload(client, bucket, "prod/digits/1/weights.bin", data, cuts)
    assert parse_etag(etag).parts == 3

    mirror = open_mirror(f"s3://{bucket}/prod", tmp_path / "cache")
    mirror.sync_all()

    copy = mirror.root / "digits" / "1" / "weights.bin"
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(data).digest()
    sizes = [cuts[0], cuts[1] - cuts[0], len(data) - cuts[1]]
    assert multipart_etag(copy, sizes) == etag.strip('"')


def test_boto3_multipart_uploads_match_the_equal_parts_guess(s3_server, bucket, tmp_path):
    data = os.urandom(11 * MIB)
    (tmp_path / "blob").write_bytes(data)
    client = s3_server.client()
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    client.upload_file(str(tmp_path / "blob"), bucket, "blob", Config=config)
    etag = client.head_object(Bucket=bucket, Key="blob")["ETag"].strip('"')
    guess = uniform_part_sizes(len(data), 5 * MIB, parse_etag(etag).parts)
    assert guess == [5 * MIB, 5 * MIB, MIB]
    assert multipart_etag(tmp_path / "blob", guess) == etag


def test_a_new_version_reuses_unchanged_files_and_a_deleted_model_disappears(
    s3_server, s3_env, bucket, digits_repo, tmp_path
):
    client = s3_server.client()
    upload_tree(client, digits_repo, bucket, "prod")
    mirror = open_mirror(f"s3://{bucket}/prod", tmp_path / "cache")
    repository = ModelRepository(mirror.root, load_model, sync=mirror.sync)
    mirror.ensure_synced()
    repository.load_all()
    first = (mirror.root / "digits").resolve()
    assert [s.version for s in repository.entry("digits").version_status()] == ["1"]

    version_1 = str(digits_repo / "digits/1/model.skops")
    client.upload_file(version_1, bucket, "prod/digits/2/model.skops")
    repository.load("digits")
    second = (mirror.root / "digits").resolve()
    assert second != first
    assert [s.version for s in repository.entry("digits").version_status()] == ["2"]
    # Version 1 was not downloaded again: the new snapshot hard-links the verified file.
    assert (second / "1/model.skops").stat().st_ino == (first / "1/model.skops").stat().st_ino
    assert first.is_dir()  # the retired snapshot stays through its grace period

    client.delete_object(Bucket=bucket, Key="prod/digits/model.toml")
    with pytest.raises(ModelNotFound):
        repository.load("digits")
    assert not (mirror.root / "digits").exists()


def test_a_crashed_partial_download_is_cleaned_up_and_never_linked(
    s3_server, s3_env, bucket, digits_repo, tmp_path
):
    upload_tree(s3_server.client(), digits_repo, bucket, "prod")
    mirror = open_mirror(f"s3://{bucket}/prod", tmp_path / "cache")
    crashed = mirror.root / ".snapshots" / ".partial-crashed"
    (crashed / "1").mkdir(parents=True)
    (crashed / "1" / "model.skops").write_bytes(b"half a file")
    mirror.sync_all()
    assert not crashed.exists()
    assert (mirror.root / "digits").resolve().parent == (mirror.root / ".snapshots").resolve()


def test_the_endpoint_comes_from_aws_endpoint_url(s3_server, s3_env, tmp_path):
    mirror = open_mirror("s3://anything/prod", tmp_path)
    assert mirror.client.meta.endpoint_url == s3_server.endpoint


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://b1x/models", "b1x", "models/"),
        ("s3://b1x/models/", "b1x", "models/"),
        ("s3://b1x/a/b//", "b1x", "a/b/"),
        ("s3://b1x", "b1x", ""),
    ],
)
def test_locations_parse_to_a_bucket_and_a_folder_prefix(uri, bucket, prefix):
    assert S3Location.parse(uri) == S3Location(bucket, prefix)


def test_a_location_without_a_bucket_is_refused():
    with pytest.raises(StorageError, match="names no bucket"):
        S3Location.parse("s3:///models")


def test_etags_that_are_not_digests_are_recognised():
    assert parse_etag('"5d41402abc4b2a76b9719d911017c592"').parts == 0
    assert parse_etag('"5ef12419dedba0bd2beaed6906cf1949-3"').parts == 3
    assert parse_etag('"opaque-etag-from-some-store"') is None


def test_uniform_part_sizes_reject_impossible_cuts():
    assert uniform_part_sizes(10, 4, 3) == [4, 4, 2]
    assert uniform_part_sizes(13, 4, 3) is None  # the last part would be larger than the first
    assert uniform_part_sizes(8, 4, 3) is None  # the last part would be empty


def test_a_mirror_root_is_unique_per_prefix(tmp_path: Path, s3_env):
    one = open_mirror("s3://bucket-a/a/b", tmp_path).root
    other = open_mirror("s3://bucket-a/a_b", tmp_path).root
    assert one != other
