"""Integer counters of one process in a memory-mapped file that every other process can read.

A statistics request may reach any worker, and it must count what every worker served,
at once, without asking the others. So each worker keeps its counters in its own file (one
writer per file: no lock across processes) and a reader sums the files. prometheus_client's
multiprocess mode works the same way; this table holds exact 64-bit integers (sums of
nanoseconds) instead of floats, and its files (`*.stats`) are not ones prometheus_client reads.

A file is a header (the bytes in use) followed by records appended one after another: the key's
length, the key (JSON, padded to 8 bytes), then `width` signed 64-bit values. A record is written
whole before the header counts it, so a reader never sees half of one. A worker restarted with
the pid of a dead one opens that file and counts on from its values.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterator, Sequence

SUFFIX = ".stats"
_USED = struct.Struct("<Q")
_KEY_LENGTH = struct.Struct("<I")
_ONE = struct.Struct("<q")
_PAIR = struct.Struct("<2q")
_INITIAL_BYTES = 1 << 16

Key = tuple[str, ...]
Values = tuple[int, ...]


class CounterTable:
    """The counters of this process: in a file under `directory`, or in memory without one.

    Every key holds `width` values, updated a (count, nanoseconds) pair at a time; updates take
    this process's lock (threads share a table).
    """

    def __init__(self, width: int, directory: str | None = None) -> None:
        self.width = width
        self.path = (
            os.path.join(directory, f"counters_{os.getpid()}{SUFFIX}") if directory else None
        )
        self._values = struct.Struct(f"<{width}q")
        self._lock = threading.Lock()
        #: key -> (offset of its values, the values): this process is the only writer.
        self._records: dict[Key, tuple[int, list[int]]] = {}
        self._buffer: mmap.mmap | bytearray
        if self.path is None:
            self._buffer = bytearray(_INITIAL_BYTES)
            self._used = _USED.size
        else:
            self._open(self.path)

    def _open(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size < _INITIAL_BYTES:
                os.ftruncate(fd, _INITIAL_BYTES)
                size = _INITIAL_BYTES
            self._buffer = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        used = _USED.unpack_from(self._buffer, 0)[0]
        if used == 0:
            self._used = _USED.size
            _USED.pack_into(self._buffer, 0, self._used)
            return
        self._used = used
        for key, offset, values in _records(self._buffer, used, self.width):
            self._records[key] = (offset, list(values))

    def add(
        self, key: Key, index: int, count: int, ns: int, latest: tuple[int, int] | None = None
    ) -> None:
        """Add `count` and `ns` to the values at `index` and `index + 1`; `latest` (index, value)
        raises that value to `value` unless it is larger already (a time of last use). One lock
        for it all; this process keeps its values in a list too, so it never reads them back."""
        with self._lock:
            record = self._records.get(key) or self._append(key)
            values = record[1]
            count = values[index] = values[index] + count
            ns = values[index + 1] = values[index + 1] + ns
            _PAIR.pack_into(self._buffer, record[0] + 8 * index, count, ns)
            if latest is not None and values[latest[0]] < latest[1]:
                values[latest[0]] = latest[1]
                _ONE.pack_into(self._buffer, record[0] + 8 * latest[0], latest[1])

    def observe(self, key: Key, ns: int, bucket: int, latest: int = 0) -> None:
        """One event of `key`: its count (value 0) and nanoseconds (value 1) grow, value
        `bucket` counts one more, value 2 rises to `latest` unless it is larger already."""
        with self._lock:
            offset, values = self._records.get(key) or self._append(key)
            count = values[0] = values[0] + 1
            ns = values[1] = values[1] + ns
            _PAIR.pack_into(self._buffer, offset, count, ns)
            hits = values[bucket] = values[bucket] + 1
            _ONE.pack_into(self._buffer, offset + 8 * bucket, hits)
            if latest > values[2]:
                values[2] = latest
                _ONE.pack_into(self._buffer, offset + 16, latest)

    def increase(self, key: Key, deltas: tuple[int, ...]) -> None:
        """Add `deltas` to the first `len(deltas)` values of `key`, written in one pack."""
        with self._lock:
            offset, values = self._records.get(key) or self._append(key)
            for index, delta in enumerate(deltas):
                values[index] += delta
            struct.pack_into(f"<{len(deltas)}q", self._buffer, offset, *values[: len(deltas)])

    def update(
        self, changes: Sequence[tuple[Key, Sequence[tuple[int, int]]]], *, assign: bool = False
    ) -> None:
        """Add each (index, delta) to the values of its key (with `assign`: set each value), for
        every key of `changes` under one lock: an event that touches several records (a
        generation's timings and tokens, every model's readiness) takes the lock once."""
        with self._lock:
            for key, pairs in changes:
                offset, values = self._records.get(key) or self._append(key)
                for index, delta in pairs:
                    value = values[index] = delta if assign else values[index] + delta
                    _ONE.pack_into(self._buffer, offset + 8 * index, value)

    def change(self, key: Key, delta: int) -> None:
        """Add `delta` to value 0 of `key` (a gauge)."""
        with self._lock:
            offset, values = self._records.get(key) or self._append(key)
            value = values[0] = values[0] + delta
            _ONE.pack_into(self._buffer, offset, value)

    def _append(self, key: Key) -> tuple[int, list[int]]:
        """A zeroed record for `key` at the end of the table."""
        encoded = json.dumps(key).encode()
        padded = -(-(_KEY_LENGTH.size + len(encoded)) // 8) * 8
        size = padded + self._values.size
        if self._used + size > len(self._buffer):
            self._grow(self._used + size)
        start = self._used
        _KEY_LENGTH.pack_into(self._buffer, start, len(encoded))
        self._buffer[start + _KEY_LENGTH.size : start + _KEY_LENGTH.size + len(encoded)] = encoded
        offset = start + padded
        self._values.pack_into(self._buffer, offset, *([0] * self.width))
        self._used = start + size
        _USED.pack_into(self._buffer, 0, self._used)  # last: the record is whole now
        record = self._records[key] = (offset, [0] * self.width)
        return record

    def _grow(self, needed: int) -> None:
        size = len(self._buffer)
        while size < needed:
            size *= 2
        if isinstance(self._buffer, bytearray):
            self._buffer.extend(bytes(size - len(self._buffer)))
            return
        assert self.path is not None
        self._buffer.flush()
        fd = os.open(self.path, os.O_RDWR)
        try:
            os.ftruncate(fd, size)
            grown = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._buffer.close()
        self._buffer = grown

    def snapshot(self) -> dict[Key, Values]:
        """This process's counters."""
        with self._lock:
            records = _records(self._buffer, self._used, self.width)
            return {key: values for key, _, values in records}


def read_directory(directory: str, width: int) -> Iterator[dict[Key, Values]]:
    """The counters of every process that kept a table in `directory`, one dict per process."""
    for _pid, table in read_tables(directory, width):
        yield table


def read_tables(directory: str, width: int) -> Iterator[tuple[int | None, dict[Key, Values]]]:
    """(pid, counters) of every process that kept a table in `directory`; the pid is None for
    a file not named by one."""
    for path in sorted(glob.glob(os.path.join(directory, f"*{SUFFIX}"))):
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:  # removed as the server stops
            continue
        if len(data) < _USED.size:
            continue
        used = min(_USED.unpack_from(data, 0)[0], len(data))
        stem = os.path.basename(path)[: -len(SUFFIX)].rpartition("_")[2]
        pid = int(stem) if stem.isdigit() else None
        yield pid, {key: values for key, _, values in _records(data, used, width)}


def _records(
    buffer: bytes | bytearray | mmap.mmap, used: int, width: int
) -> Iterator[tuple[Key, int, Values]]:
    values = struct.Struct(f"<{width}q")
    position = _USED.size
    while position + _KEY_LENGTH.size <= used:
        length = _KEY_LENGTH.unpack_from(buffer, position)[0]
        start = position + _KEY_LENGTH.size
        padded = -(-(_KEY_LENGTH.size + length) // 8) * 8
        offset = position + padded
        if offset + values.size > used:
            return
        key = tuple(json.loads(bytes(buffer[start : start + length])))
        yield key, offset, values.unpack_from(buffer, offset)
        position = offset + values.size
