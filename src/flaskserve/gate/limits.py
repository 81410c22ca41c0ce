"""Per-key rate limits (token buckets), and the rows of a request that usage is counted in.

A key with `rate = r` and `burst = b` may send b requests at once and r per second after that;
the request that finds its bucket empty gets 429 with `Retry-After` (whole seconds, rounded up).

Under Granian every worker is its own process, and a bucket kept in each would let a key send
N x its rate through N workers. So the buckets live in one small memory-mapped file in the
folder the workers share (`Settings.state_dir`), one fixed-size slot per key, updated under an
exclusive `flock` (held for a few microseconds; the kernel drops it if a worker dies holding it).
The limit is then exact across workers at the cost of two system calls per limited request.
Without a shared folder (debug server, tests, the Python API) the buckets are a dict in memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

BUCKETS_FILE = "rate-buckets.bin"
#: One slot: first 16 bytes of sha256(key id), tokens left, monotonic time of the last update.
_SLOT = struct.Struct("<16sdd")
#: Slots in the shared file (open addressing); far more than any keys file holds.
SLOTS = 4096


def retry_after_seconds(tokens: float, rate: float) -> int:
    """Whole seconds until the bucket holds one token again (at least 1, as HTTP needs)."""
    return max(1, math.ceil((1.0 - tokens) / rate))


def _refill(tokens: float, stamp: float, now: float, rate: float, size: float) -> float:
    return min(size, tokens + max(0.0, now - stamp) * rate)


class LocalBuckets:
    """Token buckets of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key_id: str, rate: float, size: float) -> int:
        """0 when a token was taken, else the seconds to wait before retrying."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._state.get(key_id, (size, now))
            tokens = _refill(tokens, stamp, now, rate, size)
            if tokens >= 1.0:
                self._state[key_id] = (tokens - 1.0, now)
                return 0
            self._state[key_id] = (tokens, now)
        return retry_after_seconds(tokens, rate)


class SharedBuckets:
    """Token buckets shared by every process that opens the same file."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / BUCKETS_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = _SLOT.size * SLOTS
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # flock excludes other processes only; threads of this one queue on this lock first.
        self._lock = threading.Lock()

    def take(self, key_id: str, rate: float, size: float) -> int:
        tag = hashlib.sha256(key_id.encode("utf-8")).digest()[:16]
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = time.monotonic()
                offset = self._find(tag)
                if offset is None:  # table full: never refuse because of our own bookkeeping
                    return 0
                stored, tokens, stamp = _SLOT.unpack_from(self._map, offset)
                if stored != tag:
                    tokens, stamp = size, now
                tokens = _refill(tokens, stamp, now, rate, size)
                allowed = tokens >= 1.0
                if allowed:
                    tokens -= 1.0
                _SLOT.pack_into(self._map, offset, tag, tokens, now)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return 0 if allowed else retry_after_seconds(tokens, rate)

    def _find(self, tag: bytes) -> int | None:
        """The offset of `tag`'s slot, or of the empty slot it may claim; None when full."""
        start = int.from_bytes(tag[:4], "little") % SLOTS
        empty = bytes(16)
        for probe in range(SLOTS):
            offset = ((start + probe) % SLOTS) * _SLOT.size
            stored = self._map[offset : offset + 16]
            if stored in (tag, empty):
                return offset
        return None

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def open_buckets(state_dir: str | None) -> LocalBuckets | SharedBuckets:
    return SharedBuckets(Path(state_dir)) if state_dir else LocalBuckets()


def batch_rows(inputs: Mapping[str, np.ndarray]) -> int:
    """Inference items of one request: the first dimension of its first input (1 for a
    scalar); this is what usage is metered in (`core.declared` bounds it before decoding)."""
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0
