"""`s3://bucket/prefix` repositories: mirrored into the local cache, verified, swapped in whole.

One mirror per endpoint, bucket and prefix, under `<cache_dir>/s3/`:

    <root>/digits -> .snapshots/digits-3f9c0a5e1b2d4c6f   what the repository reads
    <root>/.snapshots/digits-3f9c0a5e1b2d4c6f/model.toml  one complete, verified copy
    <root>/.snapshots/digits-3f9c0a5e1b2d4c6f/1/model.skops
    <root>/.lock  <root>/.synced

A snapshot is named by a digest of the model's listing (key, ETag, size): an unchanged model is
never downloaded again, a changed one gets a new folder. The folder is filled under a `.partial-`
name, every file checked against S3 (size, then ETag), renamed into place, and the model's link
is swapped with one `rename`: a reader sees the old model or the new one, never half of either,
and a download that fails its check is deleted without ever being linked. Files shared with the
current snapshot are hard-linked rather than downloaded again.

A model whose keys cannot be laid out as files (an object `m/1` beside `m/1/model.skops`, a
key with an empty, '.' or '..' segment or one longer than a file name) gets a snapshot holding
only an `.unavailable` note: the repository reports it UNAVAILABLE with that reason and the
other models serve. A model folder whose name is longer than a file name can be is skipped, as
no folder on disk could hold it.

Endpoint, region and credentials come from boto3's standard chain (environment, shared config,
`AWS_ENDPOINT_URL`, instance or pod roles); nothing here reads them itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from flaskserve.core.config import CONFIG_FILE
from flaskserve.core.repository import NAME_MAX, UNAVAILABLE_NOTE, is_folder_name
from flaskserve.progress import Transfer
from flaskserve.storage import StorageError
from flaskserve.storage.verify import md5_hex, multipart_etag, parse_etag, uniform_part_sizes

log = logging.getLogger("flaskserve.storage.s3")
# botocore logs every credential and endpoint lookup at INFO; keep a server's log to our lines.
if logging.getLogger("botocore").level == logging.NOTSET:
    logging.getLogger("botocore").setLevel(logging.WARNING)

SNAPSHOTS = ".snapshots"
MANIFEST = ".s3-manifest.json"
SYNCED = ".synced"
#: A snapshot no model links to any more is deleted this long after it was retired, so a worker
#: that resolved the old link just before the swap can finish loading from it.
RETIRED_GRACE_S = 600.0


@dataclass(frozen=True)
class S3Location:
    bucket: str
    #: Key prefix, '' or ending in '/'.
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise StorageError(f"{uri!r} is not an s3:// location")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise StorageError(f"{uri!r} names no bucket; write s3://BUCKET/PREFIX")
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key or self.prefix}"


@dataclass(frozen=True)
class S3Object:
    key: str
    #: Path below the model's folder, e.g. '1/model.skops'.
    rel: str
    etag: str
    size: int


class S3Mirror:
    """The local mirror of one `s3://` repository; see the module docstring for its layout."""

    def __init__(self, location: S3Location, cache_dir: Path, client: Any = None) -> None:
        self.location = location
        self.client = client or boto3.session.Session().client(
            "s3", config=Config(retries={"mode": "standard", "max_attempts": 3})
        )
        endpoint = str(self.client.meta.endpoint_url)
        log.info("repository %s via %s", location.uri(), endpoint)
        key = hashlib.sha256(f"{endpoint}\n{location.prefix}".encode()).hexdigest()[:10]
        slug = location.prefix.strip("/").replace("/", "_") or "_"
        self.root = cache_dir / "s3" / location.bucket / f"{slug}-{key}"
        self._snapshots = self.root / SNAPSHOTS

    @classmethod
    def from_uri(cls, uri: str, cache_dir: Path) -> S3Mirror:
        return cls(S3Location.parse(uri), cache_dir)

    # -- the Mirror interface -----------------------------------------------------------------

    def sync_all(self) -> None:
        with self._locked():
            self._sync_all()

    def ensure_synced(self) -> None:
        with self._locked():
            if not (self.root / SYNCED).is_file():
                self._sync_all()

    def sync_folder(self, name: str, local_files: dict[str, Path]) -> Path:
        """Mirror the one model folder at this location (its version folders) as `name`.

        For a local `model.toml` whose `uri` points here: `local_files` (that model.toml) are
        added to the snapshot and win over objects of the same name. Returns the model's link.
        """
        with self._locked():
            objects = [
                obj for obj in _below(self._list(self.location.prefix), self.location)
                if obj.rel not in local_files
            ]
            if not objects:
                raise StorageError(
                    f"{self.location.uri()} is empty: upload the model's version folders there "
                    f"(e.g. {self.location.uri()}1/...) or fix the uri in {CONFIG_FILE}"
                )
            self._sync_model(name, objects, local_files)
            self._collect_garbage()
        return self.root / name

    def sync(self, name: str) -> None:
        if not is_folder_name(name) or name.startswith("."):
            return
        with self._locked():
            models = _group_by_model(self._list(f"{self.location.prefix}{name}/"), self.location)
            if name in models:
                self._sync_model(name, models[name])
            else:
                self._point(name, None)
                log.info("model %s is no longer in %s; removed it", name, self.location.uri())
            self._collect_garbage()

    # -- syncing ---------------------------------------------------------------------------------

    def _sync_all(self) -> None:
        objects = self._list(self.location.prefix)
        if not objects:
            raise StorageError(
                f"{self.location.uri()} is empty: no objects under that prefix; upload a model "
                f"folder there (e.g. {self.location.uri()}digits/{CONFIG_FILE}) or fix the prefix"
            )
        models = _group_by_model(objects, self.location)
        if not models:
            top = {o.key[len(self.location.prefix) :] for o in objects}
            hint = (
                "; it looks like one model folder: serve its parent prefix instead"
                if CONFIG_FILE in top
                else ""
            )
            raise StorageError(
                f"{self.location.uri()} holds no model: expected <model>/{CONFIG_FILE} below "
                f"it{hint}"
            )
        for name, model_objects in models.items():
            self._sync_model(name, model_objects)
        for link in self.root.iterdir():
            if link.is_symlink() and link.name not in models:
                self._point(link.name, None)
        (self.root / SYNCED).write_text(json.dumps({"synced_at": time.time()}), encoding="utf-8")
        self._collect_garbage()

    def _sync_model(
        self, name: str, objects: list[S3Object], local_files: dict[str, Path] | None = None
    ) -> None:
        local_files = local_files or {}
        problem = layout_problem(objects, self.location, name)
        if problem is not None:
            self._mark_unavailable(name, problem)
            return
        entries = [(o.rel, o.etag, o.size) for o in objects] + [
            (rel, hashlib.sha256(path.read_bytes()).hexdigest(), 0)
            for rel, path in local_files.items()
        ]
        snapshot = self._snapshots / _snapshot_name(name, json.dumps(sorted(entries)))
        if not snapshot.is_dir():
            self._build_snapshot(name, objects, snapshot, local_files)
        self._point(name, snapshot)

    def _mark_unavailable(self, name: str, reason: str) -> None:
        """Link `name` to a snapshot holding only the note saying why it cannot be served."""
        log.error("model %s is unavailable: %s", name, reason)
        snapshot = self._snapshots / _snapshot_name(name, f"{UNAVAILABLE_NOTE}\n{reason}")
        if not snapshot.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=self._snapshots))
            (staging / UNAVAILABLE_NOTE).write_text(reason + "\n", encoding="utf-8")
            os.rename(staging, snapshot)
        self._point(name, snapshot)

    def _build_snapshot(
        self, name: str, objects: list[S3Object], snapshot: Path, local_files: dict[str, Path]
    ) -> None:
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=self._snapshots))
        try:
            for rel, path in local_files.items():
                shutil.copyfile(path, staging / rel)
            current = self.root / name
            reusable = _read_manifest(current) if current.is_symlink() else {}
            todo = []
            for obj in objects:
                dest = staging / obj.rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if reusable.get(obj.rel) == [obj.etag, obj.size]:
                    _link_or_copy(current / obj.rel, dest)
                else:
                    todo.append(obj)
            total = sum(o.size for o in todo)
            # A bar on a terminal, plain lines in a log (flaskserve.progress), on stderr.
            with Transfer(total, self.location.uri(f"{self.location.prefix}{name}/")) as bar:
                for obj in todo:
                    self._download(obj, staging / obj.rel, bar)
            manifest = {o.rel: [o.etag, o.size] for o in objects}
            (staging / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
            os.rename(staging, snapshot)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info(
            "model %s: downloaded %d file(s), %d bytes, reused %d from %s",
            name, len(todo), total, len(objects) - len(todo), self.location.uri(),
        )

    def _point(self, name: str, snapshot: Path | None) -> None:
        """Swap the model's link to `snapshot` in one rename (or remove it), retiring the old."""
        link = self.root / name
        old = link.resolve() if link.is_symlink() else None
        if snapshot is None:
            if link.is_symlink():
                link.unlink()
        elif old != snapshot.resolve():
            staging = self.root / f".{_digest(name)}.{os.getpid()}.link"
            staging.unlink(missing_ok=True)
            staging.symlink_to(os.path.relpath(snapshot, self.root))
            os.replace(staging, link)
        if old is not None and (snapshot is None or old != snapshot.resolve()) and old.is_dir():
            os.utime(old)  # retired now: the grace period before deletion starts here

    def _collect_garbage(self) -> None:
        """Delete crashed partial downloads and snapshots retired longer than the grace period."""
        linked = {link.resolve() for link in self.root.iterdir() if link.is_symlink()}
        now = time.time()
        for folder in self._snapshots.iterdir():
            # The lock is held, so no partial folder belongs to a running sync.
            stale = folder.name.startswith(".partial-") or (
                folder.resolve() not in linked
                and now - folder.stat().st_mtime > RETIRED_GRACE_S
            )
            if stale:
                shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One sync at a time across every process sharing this cache (the server's workers)."""
        self._snapshots.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # -- S3 calls ----------------------------------------------------------------------------

    def _list(self, prefix: str) -> list[S3Object]:
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

    def _download(self, obj: S3Object, dest: Path, bar: Transfer) -> None:
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


def _below(objects: list[S3Object], location: S3Location) -> list[S3Object]:
    """Objects with `rel` set to their key below the location; folder markers are skipped."""
    below = []
    for obj in objects:
        rel = obj.key[len(location.prefix) :]
        if not rel or rel.endswith("/"):
            continue  # a zero-byte "folder" marker made by consoles
        below.append(S3Object(obj.key, rel, obj.etag, obj.size))
    return below


def _group_by_model(objects: list[S3Object], location: S3Location) -> dict[str, list[S3Object]]:
    """Objects by model folder, keeping only folders holding `<model>/model.toml`; a folder whose
    name no local folder can have is skipped (with a warning when it holds a model)."""
    by_model: dict[str, list[S3Object]] = {}
    for obj in _below(objects, location):
        name, _, rel = obj.rel.partition("/")
        if not rel or name.startswith("."):
            continue
        by_model.setdefault(name, []).append(S3Object(obj.key, rel, obj.etag, obj.size))
    models = {}
    for name, items in sorted(by_model.items()):
        if not any(o.rel == CONFIG_FILE for o in items):
            continue
        if not is_folder_name(name):
            log.warning(
                "skipping the model folder %s: its name is longer than the %d bytes a folder "
                "name can hold", location.uri(f"{location.prefix}{name[:64]}..."), NAME_MAX,
            )
            continue
        models[name] = items
    return models


def layout_problem(objects: list[S3Object], location: S3Location, name: str) -> str | None:
    """Why the objects of model `name` (`rel` below its folder) cannot be laid out as files on
    disk, or None. S3 keys are names, not paths: `m/1` and `m/1/model.skops` may both exist."""
    rels = {obj.rel for obj in objects}
    for obj in objects:
        where = location.uri(obj.key)
        parts = obj.rel.split("/")
        if any(part in ("", ".", "..") for part in parts):
            return f"the key of {where} has an empty, '.' or '..' segment; rename it"
        if any(len(part.encode("utf-8", "surrogatepass")) > NAME_MAX for part in parts):
            return (
                f"the key of {where} has a segment longer than the {NAME_MAX} bytes a file name "
                "can hold; rename it"
            )
        if parts[0] in (MANIFEST, UNAVAILABLE_NOTE):
            return f"{where} uses the name {parts[0]}, which flaskserve keeps for itself"
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in rels:
                return (
                    f"{location.uri(obj.key[: len(obj.key) - len(obj.rel)] + folder)} is an "
                    f"object and also a folder holding {where}; a file and a folder cannot "
                    "share a name on disk, so delete or rename one of them"
                )
    return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _snapshot_name(name: str, listing: str) -> str:
    """`<name>-<digest of listing>`, with a long name cut short (and its own digest added) so
    the folder name stays within NAME_MAX."""
    label = name
    if len(name.encode("utf-8", "surrogatepass")) > 100:
        label = name.encode("utf-8", "surrogatepass")[:64].decode("utf-8", "ignore")
        label = f"{label}~{_digest(name)}"
    return f"{label}-{_digest(listing)}"


def _read_manifest(model_dir: Path) -> dict[str, list[Any]]:
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
