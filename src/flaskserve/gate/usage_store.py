"""The usage store: the journal lines a `Meter` writes, and the SQLite database they fold into.

Usage is kept per minute (`minute` = Unix time of the minute's start, UTC), per API key id and
model, one row of `COLUMNS` each; that is what `--since` filters on.

Folding is idempotent: the journal's name is inserted in the same transaction as its sums, so a
fold interrupted after the commit (or two processes folding the same orphan) never counts
twice. A process holds an `flock` on its open journal; a journal whose lock can be taken belongs
to a dead process and is folded by whichever process finds it (`fold_orphans`): a live server
within seconds, or `flaskserve usage` before it reports.

Nothing in a journal can stop metering: every value is clamped to what an SQLite INTEGER holds
(0 to 2**63 - 1), sums saturate there instead of overflowing, a record that does not parse is
moved to a `*.bad` file beside the journal (and logged) while the rest is folded, and a journal
that cannot be folded at all for what it holds is renamed `*.fold.bad` and logged, so the
journals after it are still counted. The database, its side files and the folders made for them
are private to the server's user (0600 files, 0700 folders): they say what every customer used.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("flaskserve.usage")

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


def journal_line(
    key_id: str, model: str, failed: bool, items: int, bytes_in: int, bytes_out: int,
    compute_us: int, prompt_tokens: int, completion_tokens: int,
) -> bytes:
    """One request's journal record, this minute: what `fold_journal` reads back."""
    minute = int(time.time()) // 60 * 60
    record = [
        minute, key_id, model, 1, int(failed), items, bytes_in, bytes_out, compute_us,
        prompt_tokens, completion_tokens,
    ]
    return orjson.dumps(record) + b"\n"


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
    is not a record `journal_line` wrote."""
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


def forget_old_folds(conn: sqlite3.Connection) -> None:
    """Drop the names of journals folded longer ago than a crashed fold could be retried."""
    conn.execute(
        "DELETE FROM folded_journals WHERE folded_at < ?", (time.time() - _FOLDED_RETENTION,)
    )


def tokens_used(conn: sqlite3.Connection, key_id: str) -> int:
    """Tokens (prompt + completion) `key_id` used, all time, as folded so far."""
    row = conn.execute(
        "SELECT SUM(prompt_tokens) + SUM(completion_tokens) FROM usage WHERE key_id = ?",
        (key_id,),
    ).fetchone()
    return int(row[0] or 0)


def read_usage(db_path: Path, since: int | None = None) -> list[UsageRow]:
    """The usage table from the database file, after folding journals of dead processes."""
    if not db_path.exists():
        raise FileNotFoundError(f"no usage database at {db_path}; has the server metered yet?")
    with contextlib.closing(connect(db_path)) as conn:
        fold_orphans(conn, journal_dir(db_path))
        return query(conn, since)


