"""Keeps load and unload consistent across workers.

Each worker holds its own model instances, so `POST /v2/repository/models/m/unload` reaches one
worker only. The worker that takes it acts at once and records the action in a small JSON file in
a folder shared by all workers (created by the CLI before forking); every worker watches that file
and replays actions newer than the ones it has applied. A worker that starts later (a replaced
worker, say) replays the unloads it missed. Without a shared folder (debug server, tests, the
Python API) this is a plain pass-through.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from flaskserve.core.errors import FlaskServeError, InvalidInput
from flaskserve.core.repository import READY, ModelEntry, ModelRepository

log = logging.getLogger("flaskserve.coordination")

STATE_FILE = "repository-actions.json"


class ModelControlDisabled(FlaskServeError):
    """Load and unload were asked of a server started without model control.

    Off by default, as Triton's `--model-control-mode=none`: whoever reaches an open server
    could otherwise unload every model while the health routes keep answering 200.
    """

    status_code = 403

    def __init__(self, action: str, name: str) -> None:
        super().__init__(
            f"cannot {action} model {name!r}: model control is off on this server. Start it "
            "with --model-control (FLASKSERVE_MODEL_CONTROL=1), or with --auth KEYS so admin "
            "keys may load and unload; the repository index stays readable"
        )


def generations(state_dir: Path | None) -> dict[str, int]:
    """The last action per model already recorded; taken before a worker loads its models, so
    actions published while it loads are replayed once it is up."""
    if state_dir is None:
        return {}
    return {
        name: event["generation"]
        for name, event in _read_state(state_dir / STATE_FILE)["models"].items()
    }


def _read_state(path: Path) -> dict[str, Any]:
    """The file's state, checked: `{"generation": int, "models": {name: {"action": "load" |
    "unload", "generation": int}}}`. A file that is not that (truncated, edited by hand, left
    by another version) is ignored with a warning, and entries that are not that are dropped:
    a worker must boot and serve whatever is in the shared folder."""
    empty: dict[str, Any] = {"generation": 0, "models": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as exc:
        log.warning("ignoring the coordination file %s: %s", path, exc)
        return empty
    models = state.get("models", {}) if isinstance(state, dict) else None
    generation = state.get("generation", 0) if isinstance(state, dict) else None
    if not isinstance(models, dict) or not _is_count(generation):
        log.warning("ignoring the coordination file %s: not a record of repository actions", path)
        return empty
    kept = {
        name: {"action": event["action"], "generation": event["generation"]}
        for name, event in models.items()
        if isinstance(event, dict)
        and event.get("action") in ("load", "unload")
        and _is_count(event.get("generation"))
    }
    if len(kept) != len(models):
        log.warning(
            "ignoring %d malformed entries of the coordination file %s",
            len(models) - len(kept),
            path,
        )
    return {"generation": generation, "models": kept}


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


class RepositoryControl:
    """The repository extension (index, load, unload) for every front door, which only
    translates its wire format: load and unload act locally, then tell the other workers.

    Unless `enabled`, load and unload refuse with `ModelControlDisabled`: the one place that
    decides whether what is served may change over HTTP or gRPC (replaying other workers'
    actions is not affected; only an enabled worker publishes any). The index is readable
    either way.

    `baseline` holds the generations recorded before this worker loaded its models (see
    `generations`): at start it replays unloads at or below it and every action above it.
    """

    def __init__(
        self,
        repository: ModelRepository,
        state_dir: Path | None,
        baseline: dict[str, int] | None = None,
        poll_seconds: float = 0.2,
        enabled: bool = False,
    ) -> None:
        self.repository = repository
        self.enabled = enabled
        self._path = state_dir / STATE_FILE if state_dir is not None else None
        self._applied: dict[str, int] = dict(baseline or {})
        self._poll_seconds = poll_seconds
        self._seen_mtime = -1
        self._closed = threading.Event()
        if self._path is not None:
            self._replay_unloads_up_to(self._applied)
            self._replay()
            threading.Thread(target=self._watch, name="flaskserve-sync", daemon=True).start()

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """One row per model version (`name`, `version`, `state`, `reason`), or per model that
        has no version; with `ready_only`, the READY rows alone."""
        rows = self.repository.index()
        if ready_only:
            return [row for row in rows if row["state"] == READY]
        return rows

    def load(self, name: str) -> ModelEntry:
        """Load (or reload) `name` here and tell the other workers; a 400 with the reason when
        no version of it could be loaded (the entry stays UNAVAILABLE with that reason)."""
        if not self.enabled:
            raise ModelControlDisabled("load", name)
        entry = self.repository.load(name)
        self._publish("load", name)
        if entry.default is None:
            raise InvalidInput(f"model {name!r} failed to load: {entry.reason}")
        return entry

    def unload(self, name: str) -> None:
        if not self.enabled:
            raise ModelControlDisabled("unload", name)
        self.repository.unload(name)
        self._publish("unload", name)

    def _publish(self, action: str, name: str) -> None:
        if self._path is None:
            return
        with open(self._path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            recorded = [event["generation"] for event in state["models"].values()]
            # Above anything any worker may have applied, even from a file since replaced.
            generation = max([state["generation"], *recorded, *self._applied.values()]) + 1
            state["generation"] = generation
            state["models"][name] = {"action": action, "generation": generation}
            staging = self._path.with_suffix(f".{os.getpid()}.tmp")
            staging.write_text(json.dumps(state), encoding="utf-8")
            self._applied[name] = generation
            os.replace(staging, self._path)

    def _read(self) -> dict[str, Any]:
        assert self._path is not None
        return _read_state(self._path)

    def close(self) -> None:
        """Stop applying other workers' actions (the repository is being retired)."""
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.wait(self._poll_seconds):
            try:
                self._replay()
            except Exception:
                log.exception("could not apply repository actions from other workers")

    def _replay_unloads_up_to(self, baseline: dict[str, int]) -> None:
        """Models unloaded before this worker started stay unloaded here too."""
        for name, event in self._read()["models"].items():
            if event["action"] == "unload" and name in baseline:
                self._apply("unload", name)

    def _replay(self) -> None:
        assert self._path is not None
        try:
            mtime = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._seen_mtime:
            return
        self._seen_mtime = mtime
        for name, event in self._read()["models"].items():
            generation = event["generation"]
            if generation <= self._applied.get(name, 0):
                continue
            self._applied[name] = generation
            self._apply(event["action"], name)

    def _apply(self, action: str, name: str) -> None:
        try:
            if action == "unload":
                self.repository.unload(name)
            else:
                # The worker that took the load already synced any remote files into the cache.
                self.repository.load(name, refresh=False)
        except Exception:
            log.exception("could not %s model %s as another worker did", action, name)
            return
        log.info("applied %s of model %s from another worker", action, name)
