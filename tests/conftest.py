"""Shared fixtures: the digits model trained once, and real servers on free loopback ports.

suite_policy.py, loaded from here as a plugin, sets markers and makes skips fail CI.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from flaskserve.models import digits
from servers import Server, free_port

# Markers from fixtures, skips failing CI, unmarked servers refused: see suite_policy.py.
pytest_plugins = ["suite_policy"]

__all__ = ["Server", "free_port"]


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model folder, trained once per session. Training costs seconds and copying
    almost nothing, so every fixture that needs the model copies this folder."""
    folder = tmp_path_factory.mktemp("digits-model") / "digits"
    # One BLAS thread: on a busy machine more only spin against each other (5x the CPU time).
    with threadpool_limits(1):
        digits.build(folder)
    return folder


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    """A model repository holding the digits model, shared by the whole session."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(digits_model, root / "digits")
    return root


@pytest.fixture(scope="session")
def digits_data() -> tuple:
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    return features.astype("float32"), labels


@pytest.fixture
def start_server() -> Iterator:
    """Start servers with `start_server(args, env=...)`; all are stopped after the test."""
    servers: list[Server] = []

    def start(args: list[str], **kwargs: object) -> Server:
        server = Server(args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def digits_server(
    tmp_path_factory: pytest.TempPathFactory, digits_model: Path
) -> Iterator[Server]:
    """One server with two workers over a fresh digits repository, shared by a module."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(digits_model, root / "digits")
    server = Server([str(root), "--workers", "2"])
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep the default-model cache of tests out of the user's home."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("FLASKSERVE_CACHE_DIR", str(cache))
