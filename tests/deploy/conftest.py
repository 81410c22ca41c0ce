"""Fixtures of the deploy tests: a local stand-in for Secrets Manager, and the S3 server.

The S3 server is the one tests/storage uses (SeaweedFS, `tests/storage/seaweed.py`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_secrets import secrets_manager

sys.path.insert(0, str(Path(__file__).parents[1] / "storage"))

from seaweed import SeaweedS3


@pytest.fixture
def secrets_endpoint() -> Iterator[str]:
    with secrets_manager() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()
