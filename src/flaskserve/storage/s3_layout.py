"""Where an `s3://` repository's objects go on disk: the location, its objects, and which of
them make a model folder that can be laid out as files.

S3 keys are names, not paths: `m/1` and `m/1/model.skops` may both exist, and a key may have an
empty, '.' or '..' segment or one longer than a file name. `layout_problem` says why a model's
keys cannot become files (the mirror then marks it unavailable); `group_by_model` skips a model
folder whose own name no folder on disk can hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flaskserve.core.config import CONFIG_FILE
from flaskserve.core.repository import NAME_MAX, UNAVAILABLE_NOTE, is_folder_name
from flaskserve.storage import StorageError

log = logging.getLogger("flaskserve.storage.s3")

#: The file of a snapshot listing what it holds (key, ETag, size), so the next one reuses it.
MANIFEST = ".s3-manifest.json"


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


def below(objects: list[S3Object], location: S3Location) -> list[S3Object]:
    """Objects with `rel` set to their key below the location; folder markers are skipped."""
    below = []
    for obj in objects:
        rel = obj.key[len(location.prefix) :]
        if not rel or rel.endswith("/"):
            continue  # a zero-byte "folder" marker made by consoles
        below.append(S3Object(obj.key, rel, obj.etag, obj.size))
    return below


def group_by_model(objects: list[S3Object], location: S3Location) -> dict[str, list[S3Object]]:
    """Objects by model folder, keeping only folders holding `<model>/model.toml`; a folder whose
    name no local folder can have is skipped (with a warning when it holds a model)."""
    by_model: dict[str, list[S3Object]] = {}
    for obj in below(objects, location):
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

