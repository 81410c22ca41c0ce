"""Keeps load and unload consistent across gunicorn workers.

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

from flaskserve.core.repository import ModelEntry, ModelRepository

log = logging.getLogger("flaskserve.coordination")

STATE_FILE = "repository-actions.json"


class RepositoryControl:
    """load/unload for the routes: act locally, then tell the other workers."""

    def __init__(
        self, repository: ModelRepository, state_dir: Path | None, poll_seconds: float = 0.2
    ) -> None:
        self.repository = repository
        self._path = state_dir / STATE_FILE if state_dir is not None else None
        self._applied: dict[str, int] = {}
        self._poll_seconds = poll_seconds
        self._seen_mtime = -1
        if self._path is not None:
            self._replay(startup=True)
            threading.Thread(target=self._watch, name="flaskserve-sync", daemon=True).start()

    def load(self, name: str) -> ModelEntry:
        entry = self.repository.load(name)
        self._publish("load", name)
        return entry

    def unload(self, name: str) -> None:
        self.repository.unload(name)
        self._publish("unload", name)

    def _publish(self, action: str, name: str) -> None:
        if self._path is None:
            return
        with open(self._path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            generation = int(state.get("generation", 0)) + 1
            state["generation"] = generation
            state.setdefault("models", {})[name] = {"action": action, "generation": generation}
            staging = self._path.with_suffix(f".{os.getpid()}.tmp")
            staging.write_text(json.dumps(state), encoding="utf-8")
            self._applied[name] = generation
            os.replace(staging, self._path)

    def _read(self) -> dict[str, Any]:
        assert self._path is not None
        try:
            state = json.loads(self._path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _watch(self) -> None:
        stop = threading.Event()
        while not stop.wait(self._poll_seconds):
            try:
                self._replay(startup=False)
            except Exception:
                log.exception("could not apply repository actions from other workers")

    def _replay(self, startup: bool) -> None:
        assert self._path is not None
        try:
            mtime = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._seen_mtime:
            return
        self._seen_mtime = mtime
        for name, event in self._read().get("models", {}).items():
            generation = int(event.get("generation", 0))
            if generation <= self._applied.get(name, 0):
                continue
            self._applied[name] = generation
            try:
                if event.get("action") == "unload":
                    self.repository.unload(name)
                elif not startup:
                    self.repository.load(name)
            except Exception:
                log.exception(
                    "could not %s model %s as another worker did", event.get("action"), name
                )
                continue
            log.info("applied %s of model %s from another worker", event.get("action"), name)
