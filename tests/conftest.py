"""Shared fixtures: a digits repository built once, and real servers on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flaskserve.models import digits
from servers import Server, free_port

__all__ = ["Server", "free_port"]


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding the digits model (built once per test session)."""
    root = tmp_path_factory.mktemp("repo")
    digits.build(root / "digits")
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
def digits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One gunicorn server with two workers over a fresh digits repository, shared by a module."""
    root = tmp_path_factory.mktemp("served")
    digits.build(root / "digits")
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
