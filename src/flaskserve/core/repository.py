"""The model repository: which models exist, which versions are served, and what state each is in.

Models come from folders on disk (`<root>/<model>/model.toml` and numeric version folders) or are
registered from Python. A model that fails to load is kept as UNAVAILABLE with its reason, so the
index, its metadata and `flaskserve models` say why, and the other models serve on.

Lookups on the request path read an immutable snapshot (`self._entries` is replaced, never
mutated), so they take no lock; loads and unloads serialise on one lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flaskserve.core.config import CONFIG_FILE, ModelConfig, read_model_config
from flaskserve.core.errors import ModelLoadError, ModelNotFound, ModelNotReady
from flaskserve.core.model import Model

log = logging.getLogger("flaskserve.repository")

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"

#: A model folder holding this file is UNAVAILABLE with the file's text as its reason: a remote
#: repository's mirror leaves one where it cannot lay a model's files out (`flaskserve.storage`).
UNAVAILABLE_NOTE = ".unavailable"
#: The longest file name (in bytes) Linux filesystems allow; no folder has a longer name.
NAME_MAX = 255


def is_folder_name(name: str) -> bool:
    """Whether `name` could name a model folder. A name no folder can have (too long, '.', '..',
    a '/' or a NUL) is not a model on any repository, so it is unknown (404), as on disk."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\0" not in name
        and len(name.encode("utf-8", "surrogatepass")) <= NAME_MAX
    )


#: Turns a model's config, one version number and its folder into a loaded `Model`.
Loader = Callable[[ModelConfig, str, Path], Model]
#: Told about each model version the repository stops serving, before the runtime unloads it.
UnloadListener = Callable[[Model], None]
#: Brings one model's files under `root` up to date before it is reloaded (a remote repository's
#: mirror, see `flaskserve.storage`); the repository itself only ever reads local folders.
Sync = Callable[[str], None]


@dataclass(frozen=True)
class VersionStatus:
    version: str
    state: str
    reason: str = ""
    model: Model | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One model as the repository sees it: its config (if it parsed) and its served versions."""

    name: str
    config: ModelConfig | None
    versions: dict[str, VersionStatus] = field(default_factory=dict)
    state: str = READY
    reason: str = ""
    default: Model | None = None
    factory: Callable[[], Model] | None = None

    def version_status(self) -> list[VersionStatus]:
        return sorted(self.versions.values(), key=lambda s: int(s.version))


class ModelRepository:
    """Finds, loads, unloads and looks up models; the single source of truth for their state."""

    def __init__(self, root: Path | None, loader: Loader, sync: Sync | None = None) -> None:
        self.root = root
        self._loader = loader
        self._sync = sync
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        #: Called with every version unloaded or replaced (the data plane closes its batcher
        #: there), then the runtime's own `Model.unload` runs; nobody rewrites a model's code.
        self.on_unload: list[UnloadListener] = []

    # -- discovery and loading -------------------------------------------------------------

    def model_dirs(self) -> dict[str, Path]:
        if self.root is None:
            return {}
        return {
            child.name: child
            for child in sorted(self.root.iterdir())
            if child.is_dir()
            and ((child / CONFIG_FILE).is_file() or (child / UNAVAILABLE_NOTE).is_file())
        }

    def load_all(self) -> None:
        for name in self.model_dirs():
            self.load(name, refresh=False)

    def register(self, factory: Callable[[], Model]) -> None:
        """Serve a model built in Python (the decorator API); `factory` rebuilds it on load."""
        entry = self._entry_from_factory(factory)
        self._publish(entry)

    def load(self, name: str, refresh: bool = True) -> ModelEntry:
        """(Re)load a model, then swap it in: requests never see a half-loaded version.

        With a `sync` hook and `refresh`, the model's files are brought up to date first, so a
        load picks up a version uploaded to the remote store since the last one.
        """
        if refresh and self._sync is not None and is_folder_name(name):
            self._sync(name)
        with self._lock:
            current = self._entries.get(name)
            if current is not None and current.factory is not None:
                entry = self._entry_from_factory(current.factory)
            else:
                model_dir = self.model_dirs().get(name)
                if model_dir is None:
                    raise ModelNotFound(
                        f"no model {name!r} in the repository {self.root}; a model is a folder "
                        f"holding {CONFIG_FILE}"
                    )
                entry = self._load_dir(name, model_dir)
            self._swap(name, entry)
            return entry

    def unload(self, name: str) -> None:
        with self._lock:
            current = self._entry(name)
            self._swap(
                name,
                replace(current, versions={}, state=UNAVAILABLE, reason="unloaded", default=None),
            )

    def _entry_from_factory(self, factory: Callable[[], Model]) -> ModelEntry:
        model = factory()
        status = VersionStatus(model.version, READY, model=model)
        return ModelEntry(model.name, None, {model.version: status}, default=model, factory=factory)

    def _load_dir(self, name: str, model_dir: Path) -> ModelEntry:
        note = model_dir / UNAVAILABLE_NOTE
        if note.is_file():
            reason = note.read_text(encoding="utf-8", errors="replace").strip()
            log.error("model %s is unavailable: %s", name, reason)
            return ModelEntry(name, None, state=UNAVAILABLE, reason=reason)
        try:
            config = read_model_config(model_dir)
            if config.name != name:
                raise ModelLoadError(
                    f"{CONFIG_FILE} names the model {config.name!r} but its folder is {name!r}; "
                    "make them the same"
                )
        except ModelLoadError as exc:
            log.error("model %s is unavailable: %s", name, exc)
            return ModelEntry(name, None, state=UNAVAILABLE, reason=str(exc))
        available = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        served = config.version_policy.select(available)
        if not served:
            reason = (
                f"no version folder matches the version policy in {model_dir}"
                if available
                else f"no numeric version folder (e.g. {model_dir / '1'}) holds the model"
            )
            log.error("model %s is unavailable: %s", name, reason)
            return ModelEntry(name, config, state=UNAVAILABLE, reason=reason)
        versions = {str(v): self._load_version(config, str(v), model_dir / str(v)) for v in served}
        ready = [s for s in versions.values() if s.model is not None]
        default = max(ready, key=lambda s: int(s.version)).model if ready else None
        if default is None:
            reasons = "; ".join(f"version {s.version}: {s.reason}" for s in versions.values())
            return ModelEntry(name, config, versions, UNAVAILABLE, reasons)
        return ModelEntry(name, config, versions, default=default)

    def _load_version(self, config: ModelConfig, version: str, path: Path) -> VersionStatus:
        try:
            model = self._loader(config, version, path)
        except ModelLoadError as exc:
            log.error("model %s version %s is unavailable: %s", config.name, version, exc)
            return VersionStatus(version, UNAVAILABLE, str(exc))
        except Exception as exc:
            log.exception("model %s version %s failed to load", config.name, version)
            return VersionStatus(version, UNAVAILABLE, f"{type(exc).__name__}: {exc}")
        log.info("model %s version %s is ready", config.name, version)
        return VersionStatus(version, READY, model=model)

    def _publish(self, entry: ModelEntry) -> None:
        with self._lock:
            self._swap(entry.name, entry)

    def _swap(self, name: str, entry: ModelEntry) -> None:
        old = self._entries.get(name)
        self._entries = {**self._entries, name: entry}
        if old is not None:
            for status in old.versions.values():
                if status.model is not None:
                    self._unloaded(status.model)

    def _unloaded(self, model: Model) -> None:
        for listener in self.on_unload:
            try:
                listener(model)
            except Exception:  # one listener's failure must not keep the runtime loaded
                log.exception("unload listener failed for %s version %s", model.name, model.version)
        try:
            model.unload()
        except Exception:  # out of service either way; the other versions still unload
            log.exception("unloading model %s version %s failed", model.name, model.version)

    # -- lookups (request path) -------------------------------------------------------------

    def _entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self._entries) or "none"
            raise ModelNotFound(f"unknown model {name!r}; served models: {known}")
        return entry

    def entry(self, name: str) -> ModelEntry:
        return self._entry(name)

    def get(self, name: str, version: str | None = None) -> Model:
        """The model to run: `version` if given, else the highest ready served version."""
        entry = self._entries.get(name) or self._entry(name)
        if version is None:
            if entry.default is None:
                raise ModelNotReady(f"model {name!r} is not ready: {entry.reason}")
            return entry.default
        status = entry.versions.get(version)
        if status is None:
            served = ", ".join(entry.versions) or "none"
            raise ModelNotFound(
                f"model {name!r} has no served version {version!r}; served versions: {served}"
            )
        if status.model is None:
            raise ModelNotReady(f"model {name!r} version {version} is not ready: {status.reason}")
        return status.model

    def is_model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether `get` would return a model; unknown names and versions still raise 404."""
        try:
            self.get(name, version)
        except ModelNotReady:
            return False
        return True

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def is_ready(self) -> bool:
        """Every model that should serve does: explicitly unloaded models do not count."""
        return all(
            entry.state == READY or entry.reason == "unloaded" for entry in self._entries.values()
        )

    def index(self) -> list[dict[str, Any]]:
        """The repository extension's index: one row per model version, with state and reason."""
        rows: list[dict[str, Any]] = []
        for entry in self._entries.values():
            if not entry.versions:
                rows.append({"name": entry.name, "state": entry.state, "reason": entry.reason})
            for status in entry.version_status():
                row = {"name": entry.name, "version": status.version, "state": status.state}
                if status.reason:
                    row["reason"] = status.reason
                rows.append(row)
        return rows
