"""Usage metering: what each API key used of each model, recorded per request by a `Meter`.

Per request (key, model) the meter records: 1 request, whether it failed (status >= 400),
inference items (rows of the first input), bytes received and sent, and compute time (the
wall-clock time the request spent in the data plane: signature checks, waiting for its batch and
the predict it ran in; a batched request is charged its batch's duration).

The write path is built so that nothing is lost and the request path stays cheap:

1. Each request appends one small JSON line to this process's *journal* with a single
   `os.write` (a few microseconds, no fsync). Once `write` returns the bytes are in the kernel,
   so a worker killed with SIGKILL loses nothing it had recorded.
2. Every second (`FLUSH_INTERVAL`) a background thread rotates the journal and folds it into
   the SQLite database (`usage_store`: WAL mode, so many workers and a reader share the file);
   on a clean exit (`serving.worker.exiting`, atexit) the last journal is folded the same way.
3. Journals of dead processes are folded by whichever process finds them (`ORPHAN_INTERVAL`),
   and never twice (`usage_store` says how).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from flaskserve.gate import usage_store
from flaskserve.gate.usage_store import UsageRow

log = logging.getLogger("flaskserve.usage")

#: Seconds between folds of the journal into SQLite.
FLUSH_INTERVAL = 1.0
#: Seconds between looks for journals of dead processes.
ORPHAN_INTERVAL = 5.0
#: Key id recorded when the server meters without API keys.
ANONYMOUS = "-"


class Meter:
    """Records usage in this process and folds it into the database in the background."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.folder = usage_store.journal_dir(db_path)
        usage_store.make_private_dirs(self.folder)
        self._owner = os.getpid()
        self._id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._seq = 0
        self._write_lock = threading.Lock()
        self._fold_lock = threading.Lock()
        self._fd = -1
        self._dirty = False
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._last_orphan_scan = 0.0
        self._tokens_cache: dict[str, tuple[float, int]] = {}
        with self._fold_lock:
            self._connection()  # fail at start, not on the first flush, if the path is unusable
        self._open_journal()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flaskserve-usage", daemon=True)
        self._thread.start()
        _live_meters.append(self)

    # -- request path ------------------------------------------------------------------------

    def record(
        self,
        key_id: str,
        model: str,
        failed: bool,
        items: int,
        bytes_in: int,
        bytes_out: int,
        compute_us: int,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        line = usage_store.journal_line(
            key_id, model, failed, items, bytes_in, bytes_out, compute_us, prompt_tokens,
            completion_tokens,
        )
        with self._write_lock:
            if self._fd < 0:
                log.warning("usage of %s after the meter closed was not recorded", key_id)
                return
            os.write(self._fd, line)
            self._dirty = True

    # -- folding -----------------------------------------------------------------------------

    def _journal_path(self) -> Path:
        return self.folder / f"{self._id}.log"

    def _open_journal(self) -> None:
        fd = os.open(self._journal_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def _rotate(self, reopen: bool) -> Path | None:
        """Close the current journal under a foldable name (None when it holds nothing)."""
        with self._write_lock:
            if self._fd < 0 or (not self._dirty and reopen):
                return None
            self._seq += 1
            rotated = self.folder / f"{self._id}-{self._seq}.fold"
            os.rename(self._journal_path(), rotated)
            os.close(self._fd)
            self._fd = -1
            dirty, self._dirty = self._dirty, False
            if reopen:
                self._open_journal()
        if not dirty:
            rotated.unlink(missing_ok=True)
            return None
        return rotated

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = usage_store.connect(self.db_path)
        return self._conn

    def flush(self) -> None:
        """Fold what this process recorded so far into the database (the caller waits)."""
        if os.getpid() != self._owner:  # a forked child must not touch its parent's journal
            return
        with self._fold_lock:
            self._rotate(reopen=not self._closed)
            conn = self._connection()
            for path in sorted(self.folder.glob(f"{self._id}-*.fold")):
                usage_store.fold_or_quarantine(conn, path)
            now = time.monotonic()
            if now - self._last_orphan_scan >= ORPHAN_INTERVAL:
                self._last_orphan_scan = now
                usage_store.fold_orphans(conn, self.folder)
                usage_store.forget_old_folds(conn)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            try:
                self.flush()
            except Exception:
                log.exception("could not write usage to %s; will retry", self.db_path)

    def close(self) -> None:
        """Fold everything and stop; called on a clean exit (idempotent)."""
        if self._closed or os.getpid() != self._owner:
            return
        self._closed = True
        self._stop.set()
        with contextlib.suppress(ValueError):  # already taken off by `close_all`
            _live_meters.remove(self)
        try:
            self.flush()
        finally:
            with self._fold_lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

    def tokens_used(self, key_id: str) -> int:
        """Tokens (prompt + completion) `key_id` used, all time, as folded into the database
        (every worker's usage, up to `FLUSH_INTERVAL` late); cached for that long per key."""
        now = time.monotonic()
        cached = self._tokens_cache.get(key_id)
        if cached is not None and now - cached[0] < FLUSH_INTERVAL:
            return cached[1]
        with self._fold_lock:
            used = usage_store.tokens_used(self._connection(), key_id)
        self._tokens_cache[key_id] = (now, used)
        return used

    def report(self, since: int | None = None) -> list[UsageRow]:
        """This process's usage flushed, then the table for every key and model."""
        if not self._closed:
            self.flush()
        with self._fold_lock:
            return usage_store.query(self._connection(), since)


_live_meters: list[Meter] = []


def close_all() -> None:
    """Fold and close every meter of this process (`serving.worker.exiting`, atexit)."""
    while _live_meters:
        meter = _live_meters.pop()
        try:
            meter.close()
        except Exception:
            log.exception("could not write the last usage records to %s", meter.db_path)


atexit.register(close_all)

