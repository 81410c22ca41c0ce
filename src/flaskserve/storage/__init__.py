"""Model repositories kept outside the local disk (today: S3), mirrored into the local cache.

The core repository only reads local folders. A remote repository is a mirror folder under
`Settings.cache_dir` plus a `sync(name)` hook that `ModelRepository.load` calls to bring one
model up to date before reloading it. Two kinds exist: an `s3://bucket/prefix` repository
(`s3.py`), and a local repository some of whose `model.toml` files name a `uri = "s3://..."`
holding their version folders (`view.py`). The S3 code, and boto3, are imported only when S3 is
used, so a plain install never needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from flaskserve.core.errors import FlaskServeError

REMOTE_SCHEMES = ("s3://",)


class StorageError(FlaskServeError):
    """The store failed or refused (missing bucket, access denied, a corrupted download).

    502: the request was fine, the upstream store was not. The CLI prints it as one line.
    """

    status_code = 502


class Mirror(Protocol):
    """A local copy of a remote repository that `ModelRepository` reads like any folder."""

    #: The local folder holding one entry per model.
    root: Path

    def sync_all(self) -> None:
        """Bring every model up to date; raises `StorageError` when the store refuses."""

    def sync(self, name: str) -> None:
        """Bring one model up to date (removing it locally if the store no longer has it)."""

    def ensure_synced(self) -> None:
        """`sync_all` unless some process (the CLI, before forking workers) already did."""


def is_remote(location: str | None) -> bool:
    return location is not None and location.startswith(REMOTE_SCHEMES)


def open_mirror(location: str, cache_dir: Path) -> Mirror | None:
    """The mirror serving `location` under `cache_dir`: for `s3://bucket/prefix`, or for a local
    folder whose models keep versions in S3; None for a plain local folder."""
    if not is_remote(location):
        from flaskserve.storage.view import RepositoryView, has_remote_versions

        folder = Path(location)
        if not folder.is_dir() or not has_remote_versions(folder):
            return None
        _require_boto3(location)
        return RepositoryView(folder, cache_dir)
    _require_boto3(location)
    from flaskserve.storage.s3 import S3Mirror

    return S3Mirror.from_uri(location, cache_dir)


def _require_boto3(location: str) -> None:
    try:
        import boto3  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        raise StorageError(
            f"serving {location} from S3 needs boto3 and tqdm ({exc.name} is missing); install "
            "them with: pip install 'flaskserve[s3]'"
        ) from None
