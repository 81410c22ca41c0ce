"""Is this file the object S3 holds? Size, then the ETag recomputed from the bytes on disk.

S3 computes an object's ETag in one of two ways, and only these two are digests of the content:
- single-part upload, no KMS encryption: the hex MD5 of the bytes;
- multipart upload: the MD5 of the concatenated binary MD5s of each part, then `-<part count>`.
  Recomputing it needs the exact part boundaries, which the caller gets from S3
  (`HeadObject ?partNumber=N`).
Anything else (SSE-KMS objects, stores with opaque ETags) is not a digest; callers check the size
only and say so.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})(?:-([0-9]+))?"?$')
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ParsedETag:
    digest: str
    #: Number of parts of a multipart upload; 0 for a single-part upload.
    parts: int


def parse_etag(etag: str) -> ParsedETag | None:
    """The digest and part count of an MD5-style ETag; None when it is not one."""
    match = _ETAG.match(etag.strip())
    if match is None:
        return None
    return ParsedETag(match.group(1).lower(), int(match.group(2) or 0))


def md5_hex(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def multipart_etag(path: Path, part_sizes: Iterable[int]) -> str:
    """The ETag S3 gives a multipart upload of `path` cut into parts of these sizes."""
    sizes = list(part_sizes)
    combined = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for size in sizes:
            part = hashlib.md5(usedforsecurity=False)
            left = size
            while left > 0 and (chunk := file.read(min(_CHUNK, left))):
                part.update(chunk)
                left -= len(chunk)
            combined.update(part.digest())
    return f"{combined.hexdigest()}-{len(sizes)}"


def uniform_part_sizes(total: int, first_part: int, parts: int) -> list[int] | None:
    """The part sizes when every part but the last has the first part's size (as the AWS CLI,
    boto3 and most tools upload); None when `total` cannot be cut that way."""
    if parts < 1 or first_part < 1:
        return None
    last = total - (parts - 1) * first_part
    if not 0 < last <= first_part:
        return None
    return [first_part] * (parts - 1) + [last]
