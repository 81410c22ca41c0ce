"""`s3://bucket/prefix` repositories: mirrored into the local cache, verified, swapped in whole.

One mirror per endpoint, bucket and prefix, under `<cache_dir>/s3/`:

    <root>/digits -> .snapshots/digits-3f9c0a5e1b2d4c6f   what the repository reads
    <root>/.snapshots/digits-3f9c0a5e1b2d4c6f/model.toml  one complete, verified copy
    <root>/.snapshots/digits-3f9c0a5e1b2d4c6f/1/model.skops
    <root>/.lock  <root>/.synced

A snapshot is named by a digest of the model's listing (key, ETag, size): an unchanged model is
never downloaded again, a changed one gets a new folder. The folder is filled under a `.partial-`
name, every file checked against S3 (size, then ETag: `s3_reader`), renamed into place, and the
model's link is swapped with one `rename`: a reader sees the old model or the new one, never half
of either, and a download that fails its check is deleted without ever being linked. Files shared
with the current snapshot are hard-linked rather than downloaded again.

A model whose keys cannot be laid out as files (`s3_layout`: an object `m/1` beside
`m/1/model.skops`, a key with an empty, '.' or '..' segment or one longer than a file name) gets a
snapshot holding only an `.unavailable` note: the repository reports it UNAVAILABLE with that
reason and the other models serve. A model folder whose name is longer than a file name can be is
skipped, as no folder on disk could hold it.

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
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from flaskserve.core.config import CONFIG_FILE
from flaskserve.core.repository import UNAVAILABLE_NOTE, is_folder_name
from flaskserve.progress import Transfer
from flaskserve.storage import StorageError
from flaskserve.storage.s3_layout import (
    MANIFEST,
    S3Location,
    S3Object,
    below,
    group_by_model,
    layout_problem,
)
from flaskserve.storage.s3_reader import S3Reader

log = logging.getLogger("flaskserve.storage.s3")
# botocore logs every credential and endpoint lookup at INFO; keep a server's log to our lines.
if logging.getLogger("botocore").level == logging.NOTSET:
    logging.getLogger("botocore").setLevel(logging.WARNING)

SNAPSHOTS = ".snapshots"
SYNCED = ".synced"
#: A snapshot no model links to any more is deleted this long after it was retired, so a worker
#: that resolved the old link just before the swap can finish loading from it.
RETIRED_GRACE_S = 600.0


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
        self.reader = S3Reader(location, self.client)

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
                obj for obj in below(self.reader.list(self.location.prefix), self.location)
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
            listed = self.reader.list(f"{self.location.prefix}{name}/")
            models = group_by_model(listed, self.location)
            if name in models:
                self._sync_model(name, models[name])
            else:
                self._point(name, None)
                log.info("model %s is no longer in %s; removed it", name, self.location.uri())
            self._collect_garbage()

    # -- syncing ---------------------------------------------------------------------------------

    def _sync_all(self) -> None:
        objects = self.reader.list(self.location.prefix)
        if not objects:
            raise StorageError(
                f"{self.location.uri()} is empty: no objects under that prefix; upload a model "
                f"folder there (e.g. {self.location.uri()}digits/{CONFIG_FILE}) or fix the prefix"
            )
        models = group_by_model(objects, self.location)
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
                    self.reader.download(obj, staging / obj.rel, bar)
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
