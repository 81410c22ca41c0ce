"""The S3 calls of a mirror: listing a prefix, and downloading an object checked against what S3
listed (size, then ETag: MD5, or a multipart ETag recomputed from the part sizes), with every
failure said in one sentence that tells what to change (`describe_error`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from flaskserve.progress import Transfer
from flaskserve.storage import StorageError
from flaskserve.storage.s3_layout import S3Location, S3Object
from flaskserve.storage.verify import md5_hex, multipart_etag, parse_etag, uniform_part_sizes

log = logging.getLogger("flaskserve.storage.s3")


class S3Reader:
    """Reads the objects of one location through a boto3 S3 `client`."""

    def __init__(self, location: S3Location, client: Any) -> None:
        self.location = location
        self.client = client

    def list(self, prefix: str) -> list[S3Object]:
        objects = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    objects.append(S3Object(item["Key"], "", item["ETag"], int(item["Size"])))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc) from None
        return objects

    def download(self, obj: S3Object, dest: Path, bar: Transfer) -> None:
        try:
            # Large objects arrive as parallel ranged GETs. One overwritten meanwhile (or mixed
            # across its ranges) fails the ETag check below rather than being served.
            self.client.download_file(
                self.location.bucket, obj.key, str(dest), Callback=bar.update
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, obj.key) from None
        problem = self._mismatch(obj, dest)
        if problem:
            raise StorageError(
                f"{self.location.uri(obj.key)}: the download does not match S3 ({problem}); "
                "it was discarded and the model was not changed (if the object was just "
                "overwritten, load the model again)"
            )

    def _mismatch(self, obj: S3Object, path: Path) -> str | None:
        """Why `path` is not `obj`, or None when it is (or when S3 offers no digest to check)."""
        size = path.stat().st_size
        if size != obj.size:
            return f"{size} bytes downloaded, {obj.size} listed"
        parsed = parse_etag(obj.etag)
        if parsed is None:
            log.warning("%s: ETag %s is not a digest; checked its size only", obj.key, obj.etag)
            return None
        if parsed.parts == 0:
            computed = md5_hex(path)
        else:
            computed = self._multipart_etag(obj, path, parsed.parts)
        expected = obj.etag.strip('"').lower()
        if computed == expected:
            return None
        if self._kms_encrypted(obj):
            log.warning("%s is KMS-encrypted, so its ETag is not a digest; checked its size only",
                        obj.key)
            return None
        return f"ETag {expected} expected, {computed} computed"

    def _multipart_etag(self, obj: S3Object, path: Path, parts: int) -> str:
        """Recompute a multipart ETag: assume equal parts (one HEAD), else ask for every part."""
        first = self._part_size(obj, 1)
        uniform = uniform_part_sizes(obj.size, first, parts)
        if uniform is not None:
            computed = multipart_etag(path, uniform)
            if computed == obj.etag.strip('"').lower():
                return computed
        exact = [first] + [self._part_size(obj, n) for n in range(2, parts + 1)]
        return multipart_etag(path, exact)

    def _part_size(self, obj: S3Object, number: int) -> int:
        try:
            head = self.client.head_object(
                Bucket=self.location.bucket, Key=obj.key, PartNumber=number, IfMatch=obj.etag
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, obj.key) from None
        return int(head["ContentLength"])

    def _kms_encrypted(self, obj: S3Object) -> bool:
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=obj.key)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, obj.key) from None
        return str(head.get("ServerSideEncryption", "")).startswith("aws:kms")

    def _error(self, exc: Exception, key: str | None = None) -> StorageError:
        return StorageError(describe_error(exc, self.location, key))


def describe_error(exc: Exception, location: S3Location, key: str | None = None) -> str:
    """One sentence saying what went wrong with S3 and what to change."""
    where = location.uri(key) if key else location.uri()
    if isinstance(exc, NoCredentialsError):
        return (
            f"no AWS credentials to read {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with an instance or pod role"
        )
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach S3 for {where}: {exc}; check AWS_ENDPOINT_URL and the network"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket" or (status == 404 and key is None):
            return (
                f"bucket {location.bucket!r} does not exist at this endpoint; check the bucket "
                f"name in {location.uri()} (and AWS_ENDPOINT_URL / the region)"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                    "InvalidToken", "TokenRefreshRequired"):
            return f"S3 rejected the credentials ({code}) reading {where}; check them"
        if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            return (
                f"access denied to {where}: the credentials in use need s3:ListBucket on "
                f"arn:aws:s3:::{location.bucket} and s3:GetObject on "
                f"arn:aws:s3:::{location.bucket}/{location.prefix}*"
            )
        if code in ("PreconditionFailed", "412"):
            return f"{where} changed while it was downloaded; load the model again"
        return f"S3 refused a request for {where}: {code or status}: {error.get('Message', exc)}"
    return f"S3 request for {where} failed: {exc}"

