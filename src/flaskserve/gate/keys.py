"""API keys: a TOML file of key *hashes*, and the lookup that turns a presented key into its id.

The file never holds a key in clear. `add_key` makes a random key, prints it once (the caller
does) and appends only its SHA-256 digest:

    [keys."alice"]
    hash = "sha256:9f86d0..."
    models = ["digits"]        # omitted: every model
    admin = false              # admin: repository load/unload/index, /v2/usage, /metrics
    rate = 10.0                # requests per second, token bucket; 0 or omitted: unlimited
    burst = 20                 # bucket size; defaults to max(1, rate)
    tokens = 100000            # token quota of generative models (prompt + completion), all
                               # time; spent: 429 before a stream starts. 0 or omitted: none

Why a fast hash is right here: slow password hashes (bcrypt, scrypt, argon2) exist because
human passwords have little entropy, so a stolen hash can be brute-forced unless each guess is
expensive. These keys are 32 random bytes (256 bits) from `secrets`: nobody can enumerate that
space whatever the hash costs, so SHA-256 gives the same protection as argon2 for a stolen file
while costing about a microsecond per request instead of tens of milliseconds. A key that came
from anywhere else (a human-chosen string) would need a slow hash; `add_key` never makes one.

Lookups compare the presented key's digest with every stored digest using
`hmac.compare_digest`, without stopping at the first match, so the time taken does not depend on
how much of a digest matched or on which entry did.

The file is never changed in place: `keys add` and `keys revoke` write a new file beside it and
rename it over the old one, so a serving process reloading it reads the old keys or the new ones,
never a half-written or empty file. A reload that finds no keys at all where there were some
keeps the keys it had and logs why: an empty file is far more often a botched edit or copy than
an operator revoking every customer at once. Revoking keys one by one still works to the last:
`keys revoke` leaves an explicit, empty `[keys]` table, which a reload takes at its word.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("flaskserve.keys")

KEY_PREFIX = "fsk_"
HASH_PREFIX = "sha256:"
#: Key ids appear in URLs of reports, metric labels and logs: keep them plain.
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
#: How often (seconds) a serving process looks at the file's mtime for added or revoked keys.
RELOAD_INTERVAL = 1.0


class KeyFileError(Exception):
    """The keys file is missing or malformed; the message says which entry and how to fix it."""


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: its id (the name given to `keys add`), digest and permissions."""

    id: str
    digest: str
    models: tuple[str, ...] = ()
    admin: bool = False
    rate: float = 0.0
    burst: float = 0.0
    #: Tokens (prompt + completion) this key may use on generative models; 0: no quota.
    tokens: int = 0

    def allows(self, model: str | None) -> bool:
        """Whether this key may use `model` (admins and unrestricted keys may use any)."""
        return self.admin or not self.models or model is None or model in self.models

    @property
    def bucket_size(self) -> float:
        return self.burst if self.burst > 0 else max(1.0, self.rate)


def new_key() -> str:
    """A fresh API key: 32 random bytes, URL-safe, with a prefix that secret scanners can spot."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_of(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_keys(text: str, source: str = "keys file") -> dict[str, ApiKey]:
    """The keys of a keys file's text, checked entry by entry."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeyFileError(f"{source} is not valid TOML: {exc}") from None
    entries = table.get("keys", {})
    if not isinstance(entries, dict):
        raise KeyFileError(f'{source}: [keys] must be a table of [keys."<id>"] tables')
    keys: dict[str, ApiKey] = {}
    for key_id, entry in entries.items():
        keys[key_id] = _key_from_entry(key_id, entry, source)
    return keys


def _key_from_entry(key_id: str, entry: Any, source: str) -> ApiKey:
    where = f"{source}: key {key_id!r}"
    if not KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"{where}: ids are letters, digits and _.@- (at most 64)")
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where} must be a table")
    digest = entry.get("hash")
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise KeyFileError(f"{where}: hash must be 'sha256:' and 64 hex digits")
    models = entry.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise KeyFileError(f"{where}: models must be a list of model names")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise KeyFileError(f"{where}: admin must be true or false")
    rate = entry.get("rate", 0)
    burst = entry.get("burst", 0)
    for name, value in (("rate", rate), ("burst", burst)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise KeyFileError(f"{where}: {name} must be a number >= 0")
    tokens = entry.get("tokens", 0)
    if type(tokens) is not int or tokens < 0:
        raise KeyFileError(f"{where}: tokens must be an integer >= 0 (a token quota)")
    return ApiKey(key_id, digest, tuple(models), admin, float(rate), float(burst), tokens)


def render_entry(key: ApiKey, created: str) -> str:
    """The TOML text of one key's table (the format `parse_keys` reads)."""
    lines = [f"[keys.{_toml_string(key.id)}]", f"hash = {_toml_string(key.digest)}"]
    if key.models:
        lines.append(f"models = [{', '.join(_toml_string(m) for m in key.models)}]")
    lines.append(f"admin = {'true' if key.admin else 'false'}")
    if key.rate:
        lines.append(f"rate = {key.rate!r}")
    if key.burst:
        lines.append(f"burst = {key.burst!r}")
    if key.tokens:
        lines.append(f"tokens = {key.tokens}")
    lines.append(f"created = {_toml_string(created)}")
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    out = ['"']
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


HEADER = (
    "# flaskserve API keys. Only SHA-256 digests of the keys are stored here; a key is shown\n"
    "# once, by `flaskserve keys add`. Serve with `flaskserve serve --auth <this file>`.\n"
)


def add_key(
    path: Path,
    key_id: str,
    models: tuple[str, ...] = (),
    admin: bool = False,
    rate: float = 0.0,
    burst: float = 0.0,
    tokens: int = 0,
) -> str:
    """Append a new key to the file at `path` (created 0600 if missing); returns the key itself,
    which exists nowhere else afterwards."""
    if not KEY_ID.fullmatch(key_id):
        raise KeyFileError(
            f"{key_id!r} is not a usable key id: use letters, digits and _.@- (at most 64)"
        )
    key = new_key()
    entry = ApiKey(
        key_id, digest_of(key), tuple(models), admin, float(rate), float(burst), int(tokens)
    )
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _locked_for_update(path) as current:
        text = current.read()
        if key_id in parse_keys(text, str(path)):
            raise KeyFileError(f"{path} already has a key {key_id!r}; revoke it or pick another")
        prefix = HEADER if not text else ("" if text.endswith("\n") else "\n")
        current.replace(text + prefix + "\n" + render_entry(entry, created))
    return key


def revoke_key(path: Path, key_id: str) -> None:
    """Remove a key's entry; serving processes stop accepting it within `RELOAD_INTERVAL`."""
    with _locked_for_update(path) as current:
        text = current.read()
        keys = parse_keys(text, str(path))
        if key_id not in keys:
            raise KeyFileError(f"{path} has no key {key_id!r}")
        kept = _without_table(text, key_id)
        if set(parse_keys(kept, str(path))) != set(keys) - {key_id}:
            raise KeyFileError(f"could not remove {key_id!r} from {path}; edit it by hand")
        if not _declares_keys(kept):  # the last key: say "no keys" on purpose (see KeyStore)
            kept = kept.rstrip("\n") + "\n\n[keys]\n"
        current.replace(kept)


def _without_table(text: str, key_id: str) -> str:
    """`text` without the `[keys."<key_id>"]` table (up to the next table header)."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("["):
            header = stripped.split("#", 1)[0].strip()
            skipping = _is_table_of(header, key_id)
        if not skipping:
            kept.append(line)
    return "".join(kept)


def _declares_keys(text: str) -> bool:
    """Whether `text` has a `keys` table at all (an empty one says "no keys" on purpose)."""
    try:
        return "keys" in tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False


def _is_table_of(header: str, key_id: str) -> bool:
    try:
        parsed = tomllib.loads(header + "\n")
    except tomllib.TOMLDecodeError:
        return False
    keys = parsed.get("keys")
    return isinstance(keys, dict) and list(keys) == [key_id]


class _locked_for_update:
    """The keys file (created 0600 if missing), exclusively locked for a read-modify-write.

    The lock is an `flock` on the file itself; since an update renames a new file over it, a
    writer that waited for the lock checks the name still leads to the file it locked and
    starts again if not (it would otherwise read, and overwrite, the keys as they were)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> _locked_for_update:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    return self
            except FileNotFoundError:
                pass
            os.close(fd)

    def read(self) -> str:
        with os.fdopen(os.dup(self._fd), "r", encoding="utf-8") as handle:
            return handle.read()

    def replace(self, text: str) -> None:
        """Make `text` the file's content in one step: a private temporary file beside it,
        synced, then renamed over it (the keys file's mode is kept)."""
        mode = stat.S_IMODE(os.fstat(self._fd).st_mode)
        fd, staging = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), mode)
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise
        _sync_folder(self.path.parent)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # drops the lock


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KeyStore:
    """The keys of one file, re-read when the file changes, for the request path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = 0.0
        self._version: tuple[int, int] = (-1, -1)
        self._keys: dict[str, ApiKey] = {}
        self._digests: list[tuple[bytes, ApiKey]] = []
        self._load()

    def _load(self) -> None:
        try:
            found = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyFileError(
                f"keys file {self.path} does not exist; create it with "
                f"`flaskserve keys add NAME --file {self.path}`"
            ) from None
        keys = parse_keys(text, str(self.path))
        self._version = (found.st_ino, found.st_mtime_ns)
        if not keys and self._keys and not _declares_keys(text):
            log.error(
                "keys file %s now holds no keys; keeping the %d keys loaded before (an empty "
                "file is usually a botched edit; to refuse every key, leave an empty [keys] "
                "table in it, as `flaskserve keys revoke` does for the last key)",
                self.path,
                len(self._keys),
            )
            return
        self._keys = keys
        self._digests = [(k.digest.encode("ascii"), k) for k in keys.values()]

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_INTERVAL:
            return
        with self._lock:
            if now - self._checked < RELOAD_INTERVAL:
                return
            self._checked = now
            try:
                found = self.path.stat()
                if (found.st_ino, found.st_mtime_ns) != self._version:
                    self._load()
            except (OSError, KeyFileError) as exc:
                # Keep serving with the keys already known; a broken edit must not open the door.
                log.error("keeping the previous keys: %s", exc)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key whose digest matches `presented`, or None; constant time over the entries."""
        self._refresh()
        candidate = digest_of(presented).encode("ascii")
        found: ApiKey | None = None
        for digest, key in self._digests:
            if hmac.compare_digest(digest, candidate):
                found = key
        return found

    def keys(self) -> dict[str, ApiKey]:
        self._refresh()
        return dict(self._keys)
