"""Fixtures for S3 repositories: one SeaweedFS server per session, a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from corrupting_proxy import CorruptingProxy
from seaweed import SeaweedS3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS environment pointing at the test server, also set in this process."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server.env


@pytest.fixture
def bucket(s3_server: SeaweedS3) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(s3_server: SeaweedS3) -> Iterator[CorruptingProxy]:
    server = CorruptingProxy(s3_server.endpoint)
    yield server
    server.close()
