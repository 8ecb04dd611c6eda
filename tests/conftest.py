"""Shared pytest fixtures, one section per area."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from r2b.store import LocalStore, ObjectStore, RetryingStore, S3Store
from tests.s3server import S3Server, create_bucket, fake_aws_env, running_server, store_client

# --- object store fixtures ---


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server subprocess for the whole session (``.endpoint_url``).

    boto3 in this process gets fake credentials through the environment meanwhile.
    """
    with fake_aws_env(), running_server() as server:
        yield server


@pytest.fixture
def s3_store(s3_server: S3Server) -> ObjectStore:
    """An empty bucket of its own, as ``RetryingStore(S3Store(...))``."""
    bucket = create_bucket(s3_server.endpoint_url)
    return RetryingStore(S3Store(bucket, client=store_client(s3_server.endpoint_url)))


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    """An empty ``LocalStore`` in the test's temporary directory."""
    return LocalStore(tmp_path / "store")
