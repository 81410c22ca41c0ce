"""Usage metering: what each API key used of each model, in an embedded SQLite database.

Per request (key, model) the meter records: 1 request, whether it failed (status >= 400),
inference items (rows of the first input), bytes received and sent, and compute time (the
wall-clock time the request spent in the data plane: signature checks, waiting for its batch and
the predict it ran in; a batched request is charged its batch's duration).

The write path is built so that nothing is lost and the request path stays cheap:

1. Each request appends one small JSON line to this process's *journal* with a single
   `os.write` (a few microseconds, no fsync). Once `write` returns the bytes are in the kernel,
   so a worker killed with SIGKILL loses nothing it had recorded.
2. Every second (`FLUSH_INTERVAL`) a background thread rotates the journal and folds it into
   SQLite in one transaction (WAL mode, so many workers and a reader share the file); on a clean
   exit (`serving.worker.exiting`, atexit) the last journal is folded the same way.
3. Folding is idempotent: the journal's name is inserted in the same transaction as its sums,
   so a fold interrupted after the commit (or two processes folding the same orphan) never
   counts twice. A process holds an `flock` on its open journal; a journal whose lock can be
   taken belongs to a dead process and is folded by whichever process finds it, within
   seconds, or by `flaskserve usage` before it reports.

Usage is kept per minute (`minute` = Unix time of the minute's start, UTC), which is what
`--since` filters on.

Nothing in a journal can stop metering: every value is clamped to what an SQLite INTEGER holds
(0 to 2**63 - 1), sums saturate there instead of overflowing, a record that does not parse is
moved to a `*.bad` file beside the journal (and logged) while the rest is folded, and a journal
that cannot be folded at all for what it holds is renamed `*.fold.bad` and logged, so the
journals after it are still counted. The database, its side files and the folders made for them
are private to the server's user (0600 files, 0700 folders): they say what every customer used.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import fcntl
import io
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("flaskserve.usage")

#: Seconds between folds of the journal into SQLite.
FLUSH_INTERVAL = 1.0
#: Seconds between looks for journals of dead processes.
ORPHAN_INTERVAL = 5.0
#: Key id recorded when the server meters without API keys.
ANONYMOUS = "-"
COLUMNS = (
    "requests", "failed", "items", "bytes_in", "bytes_out", "compute_us",
    "prompt_tokens", "completion_tokens",
)
#: Columns added after the first release, each with the journal length that lacks it: old
#: databases gain them (ALTER TABLE), old journal lines read them as 0.
_LATER_COLUMNS = ("prompt_tokens", "completion_tokens")
#: The largest value an SQLite INTEGER holds; every count and sum is clamped to it.
MAX_INTEGER = 2**63 - 1
#: Suffix of quarantined journals and of the unreadable records taken out of a journal.
QUARANTINE_SUFFIX = ".bad"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    minute INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    items INTEGER NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    compute_us INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, key_id, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS folded_journals (
    name TEXT PRIMARY KEY,
    folded_at REAL NOT NULL
) WITHOUT ROWID;
"""

_UPSERT = f"""
INSERT INTO usage (minute, key_id, model, {", ".join(COLUMNS)})
VALUES ({", ".join("?" * (3 + len(COLUMNS)))})
ON CONFLICT (minute, key_id, model) DO UPDATE SET
    {", ".join(f"{c} = MIN({c} + excluded.{c}, {MAX_INTEGER})" for c in COLUMNS)}
"""

#: Folded journal names are remembered this long (a crashed fold is retried within seconds).
_FOLDED_RETENTION = 7 * 24 * 3600.0


def journal_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".pending")


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents 0700 whatever the umask; existing ones are left
    as the operator made them."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir(0o700)
        except FileExistsError:  # another process made it first
            continue
        os.chmod(path, 0o700)


def _create_private_file(path: Path) -> None:
    """An empty 0600 file at `path` unless one exists (SQLite gives its -wal, -shm and
    -journal files the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection to the usage database (created 0600 with its schema if new), in WAL mode."""
    make_private_dirs(db_path.parent)
    _create_private_file(db_path)
    conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    present = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    for column in _LATER_COLUMNS:
        if column not in present:  # a database made before tokens were metered
            conn.execute(f"ALTER TABLE usage ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
    return conn


def _clamp(value: int) -> int:
    return min(max(value, 0), MAX_INTEGER)


def _parse_record(line: bytes) -> tuple[tuple[int, str, str], list[int]] | None:
    """(minute, key id, model) and the clamped counts of one journal line; None when the line
    is not a record `Meter.record` writes."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    lengths = (3 + len(COLUMNS), 3 + len(COLUMNS) - len(_LATER_COLUMNS))
    if not isinstance(record, list) or len(record) not in lengths:
        return None
    minute, key_id, model, *values = record
    values += [0] * (len(COLUMNS) - len(values))
    numbers = [minute, *values]
    if not (isinstance(key_id, str) and isinstance(model, str)) or not all(
        type(n) is int for n in numbers
    ):
        return None
    return (_clamp(minute), key_id, model), [_clamp(v) for v in values]


def fold_journal(conn: sqlite3.Connection, path: Path) -> int:
    """Add one closed journal file to the database and delete it; returns the records folded.
    Lines that are not records are moved to a `.bad` file beside it, with a warning."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0
    sums: dict[tuple[int, str, str], list[int]] = {}
    bad: list[bytes] = []
    lines = 0
    for line in raw.splitlines():
        parsed = _parse_record(line)
        if parsed is None:
            if line.strip():
                bad.append(line)
            continue
        key, values = parsed
        row = sums.setdefault(key, [0] * len(COLUMNS))
        for i, value in enumerate(values):
            row[i] = min(row[i] + value, MAX_INTEGER)
        lines += 1
    if bad:
        _quarantine_lines(path, bad)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO folded_journals (name, folded_at) VALUES (?, ?)", (path.name, time.time())
        )
    except sqlite3.IntegrityError:  # folded before (a fold that died after its commit)
        conn.execute("ROLLBACK")
        path.unlink(missing_ok=True)
        return 0
    try:
        conn.executemany(_UPSERT, [(*key, *values) for key, values in sums.items()])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    path.unlink(missing_ok=True)
    return lines


def _quarantine_lines(path: Path, lines: list[bytes]) -> None:
    target = path.with_suffix(QUARANTINE_SUFFIX)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"".join(line + b"\n" for line in lines))
    finally:
        os.close(fd)
    log.warning(
        "%d unreadable usage records in %s were quarantined in %s (not billed); the other "
        "records were folded",
        len(lines),
        path,
        target,
    )


def fold_or_quarantine(conn: sqlite3.Connection, path: Path) -> int:
    """`fold_journal`, except that a journal whose contents make the fold fail is renamed
    `*.fold.bad` with a warning instead of failing every later fold. Database errors (locked,
    disk full) are raised: the journal is fine and is folded on the next try."""
    try:
        return fold_journal(conn, path)
    except sqlite3.OperationalError:
        raise
    except Exception as exc:
        target = path.with_name(path.name + QUARANTINE_SUFFIX)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return 0
        log.warning(
            "usage journal %s could not be folded (%s); quarantined as %s", path, exc, target
        )
        return 0


def fold_orphans(conn: sqlite3.Connection, folder: Path) -> int:
    """Fold the journals no live process holds: rotated ones left behind and the open
    journals of processes that died. Returns the lines folded."""
    if not folder.is_dir():
        return 0
    folded = 0
    for path in sorted(folder.glob("*.fold")):
        folded += fold_or_quarantine(conn, path)
    for path in sorted(folder.glob("*.log")):
        claimed = _claim_dead_journal(path)
        if claimed is not None:
            folded += fold_or_quarantine(conn, claimed)
    return folded


def _claim_dead_journal(path: Path) -> Path | None:
    """Rename the open journal of a dead process to a foldable name; None if its owner lives."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        # The lock may be on a journal its owner rotated away since we opened the name; only
        # a file still under that name and unlocked is an orphan (its owner is gone).
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None
        except FileNotFoundError:
            return None
        target = path.with_name(f"{path.stem}-orphan-{uuid.uuid4().hex[:8]}.fold")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        return target
    finally:
        os.close(fd)


class Meter:
    """Records usage in this process and folds it into the database in the background."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.folder = journal_dir(db_path)
        make_private_dirs(self.folder)
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
        minute = int(time.time()) // 60 * 60
        line = orjson.dumps(
            [
                minute, key_id, model, 1, int(failed), items, bytes_in, bytes_out, compute_us,
                prompt_tokens, completion_tokens,
            ]
        )
        with self._write_lock:
            if self._fd < 0:
                log.warning("usage of %s after the meter closed was not recorded", key_id)
                return
            os.write(self._fd, line + b"\n")
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
            self._conn = connect(self.db_path)
        return self._conn

    def flush(self) -> None:
        """Fold what this process recorded so far into the database (the caller waits)."""
        if os.getpid() != self._owner:  # a forked child must not touch its parent's journal
            return
        with self._fold_lock:
            self._rotate(reopen=not self._closed)
            conn = self._connection()
            for path in sorted(self.folder.glob(f"{self._id}-*.fold")):
                fold_or_quarantine(conn, path)
            now = time.monotonic()
            if now - self._last_orphan_scan >= ORPHAN_INTERVAL:
                self._last_orphan_scan = now
                fold_orphans(conn, self.folder)
                conn.execute(
                    "DELETE FROM folded_journals WHERE folded_at < ?",
                    (time.time() - _FOLDED_RETENTION,),
                )

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
            row = self._connection().execute(
                "SELECT SUM(prompt_tokens) + SUM(completion_tokens) FROM usage WHERE key_id = ?",
                (key_id,),
            ).fetchone()
        used = int(row[0] or 0)
        self._tokens_cache[key_id] = (now, used)
        return used

    def report(self, since: int | None = None) -> list[UsageRow]:
        """This process's usage flushed, then the table for every key and model."""
        if not self._closed:
            self.flush()
        with self._fold_lock:
            return query(self._connection(), since)


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


@dataclass(frozen=True)
class UsageRow:
    key_id: str
    model: str
    requests: int
    failed: int
    items: int
    bytes_in: int
    bytes_out: int
    compute_us: int
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key_id,
            "model": self.model,
            "requests": self.requests,
            "failed": self.failed,
            "items": self.items,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "compute_ms": round(self.compute_us / 1000.0, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def query(conn: sqlite3.Connection, since: int | None = None) -> list[UsageRow]:
    """Usage per key and model, summed over the minutes from `since` (Unix time) on; a sum past
    SQLite's range (SUM() raises rather than wrap) is clamped to `MAX_INTEGER`."""
    start = int(since) // 60 * 60 if since is not None else 0
    sums = ", ".join(f"SUM({column})" for column in COLUMNS)
    try:
        rows = conn.execute(
            f"SELECT key_id, model, {sums} FROM usage WHERE minute >= ? "
            "GROUP BY key_id, model ORDER BY key_id, model",
            (start,),
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "overflow" not in str(exc):
            raise
        return _clamped_sums(conn, start)
    return [UsageRow(*row) for row in rows]


def _clamped_sums(conn: sqlite3.Connection, start: int) -> list[UsageRow]:
    totals: dict[tuple[str, str], list[int]] = {}
    for key_id, model, *values in conn.execute(
        f"SELECT key_id, model, {', '.join(COLUMNS)} FROM usage WHERE minute >= ? "
        "ORDER BY key_id, model",
        (start,),
    ):
        row = totals.setdefault((key_id, model), [0] * len(COLUMNS))
        for i, value in enumerate(values):
            row[i] = min(row[i] + value, MAX_INTEGER)
    return [UsageRow(*key, *values) for key, values in totals.items()]


def read_usage(db_path: Path, since: int | None = None) -> list[UsageRow]:
    """The usage table from the database file, after folding journals of dead processes."""
    if not db_path.exists():
        raise FileNotFoundError(f"no usage database at {db_path}; has the server metered yet?")
    with contextlib.closing(connect(db_path)) as conn:
        fold_orphans(conn, journal_dir(db_path))
        return query(conn, since)


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> int:
    """Unix time from `30m`, `24h`, `7d` (ago) or an ISO date/time (UTC unless it says)."""
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    now = time.time() if now is None else now
    if match:
        return int(now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration (30m, 24h, 7d) nor an ISO date "
            "(2024-05-01 or 2024-05-01T12:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def format_table(rows: list[UsageRow]) -> str:
    header = (
        "KEY", "MODEL", "REQUESTS", "FAILED", "ITEMS", "BYTES_IN", "BYTES_OUT", "COMPUTE_MS",
        "PROMPT_TOKENS", "COMPLETION_TOKENS",
    )
    body = [
        (
            r.key_id, r.model, str(r.requests), str(r.failed), str(r.items), str(r.bytes_in),
            str(r.bytes_out), f"{r.compute_us / 1000.0:.3f}", str(r.prompt_tokens),
            str(r.completion_tokens),
        )
        for r in rows
    ]
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_csv(rows: list[UsageRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "model", *COLUMNS[:5], "compute_ms", *_LATER_COLUMNS])
    for r in rows:
        writer.writerow(
            [r.key_id, r.model, r.requests, r.failed, r.items, r.bytes_in, r.bytes_out,
             f"{r.compute_us / 1000.0:.3f}", r.prompt_tokens, r.completion_tokens]
        )
    return out.getvalue()


def since_label(since: int | None) -> str:
    if since is None:
        return "all time"
    return datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M UTC")

