"""Local repositories whose models keep their version folders in S3 (`uri = "s3://..."`).

A model folder may hold only its `model.toml`, naming where its versions live:

    models/digits/model.toml      uri = "s3://bucket/models/digits"   (then runtime, inputs, ...)
    s3://bucket/models/digits/1/model.skops

Such a repository is served through a view in the cache: one link per model, to the model's own
folder when it is plain, or to a snapshot that holds the local `model.toml` plus the version
folders mirrored from its `uri` (downloaded, verified and swapped in as `flaskserve.storage.s3`
does for a whole `s3://` repository). Editing `model.toml` or uploading a version shows on the
next load of that model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flaskserve.core.config import CONFIG_FILE
from flaskserve.core.repository import is_folder_name

URI_KEY = "uri"
SYNCED = ".synced"


def uri_of(model_dir: Path) -> str | None:
    """The `uri` a model folder's `model.toml` names, if any (an unreadable file names none: the
    repository reports its error when it loads it)."""
    try:
        table = tomllib.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    uri = table.get(URI_KEY)
    return uri if isinstance(uri, str) else None


def has_remote_versions(root: Path) -> bool:
    return any(child.is_dir() and uri_of(child) for child in root.iterdir())


class RepositoryView:
    """The view of one local repository; the `Mirror` interface of `flaskserve.storage`."""

    def __init__(self, source: Path, cache_dir: Path) -> None:
        self.source = source.resolve()
        key = hashlib.sha256(str(self.source).encode()).hexdigest()[:10]
        self.root = cache_dir / "views" / f"{self.source.name or 'root'}-{key}"
        self._cache_dir = cache_dir

    def sync_all(self) -> None:
        with self._locked():
            names = {
                child.name for child in self.source.iterdir()
                if child.is_dir() and (child / CONFIG_FILE).is_file()
            }
            for name in sorted(names):
                self._sync(name)
            for link in self.root.iterdir():
                if link.is_symlink() and link.name not in names:
                    link.unlink()
            (self.root / SYNCED).write_text(json.dumps({"synced_at": time.time()}))

    def ensure_synced(self) -> None:
        if not (self.root / SYNCED).is_file():
            self.sync_all()

    def sync(self, name: str) -> None:
        if not is_folder_name(name) or name.startswith("."):
            return
        with self._locked():
            self._sync(name)

    def _sync(self, name: str) -> None:
        model_dir = self.source / name
        target: Path | None = None
        if (model_dir / CONFIG_FILE).is_file():
            uri = uri_of(model_dir)
            if uri is None:
                target = model_dir
            else:
                from flaskserve.storage.s3 import S3Mirror

                mirror = S3Mirror.from_uri(uri, self._cache_dir)
                target = mirror.sync_folder(name, {CONFIG_FILE: model_dir / CONFIG_FILE})
        _relink(self.root / name, target)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _relink(link: Path, target: Path | None) -> None:
    """Point `link` at `target` with one rename (or remove it when `target` is None)."""
    if target is None:
        if link.is_symlink():
            link.unlink()
        return
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    digest = hashlib.sha256(link.name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    staging = link.with_name(f".{digest}.{os.getpid()}.link")  # within NAME_MAX for any name
    staging.unlink(missing_ok=True)
    staging.symlink_to(target)
    os.replace(staging, link)
