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


# --- Prefect server (session) ---
#
# One real ``prefect server start`` for the whole session, started the first time a test asks
# for it (tests that never do pay nothing). Without PREFECT_API_URL every process would start
# its own ephemeral server (8-17 s each, and concurrent ones collide). Prefect is imported
# inside the fixtures only, so collecting tests that do not use it stays cheap (the helper
# module below needs only the standard library). Its imports live here, with the section.

from tests.prefect_server import PrefectServer  # noqa: E402
from tests.prefect_server import running_server as running_prefect_server  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[PrefectServer]:
    """The session's Prefect server (``.api_url``, ``.startup_s``, ``.log_tail()``).

    The freshly migrated database of a first session is kept in pytest's cache (one file
    per Prefect version) and copied into later sessions' servers, which saves the
    migrations (about half of the start-up).
    """
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    template = None
    if cache is not None:
        template = cache.mkdir("prefect-server") / f"prefect-{_prefect_version()}.db"
    home = tmp_path_factory.mktemp("prefect-server-home")
    with running_prefect_server(home, database_template=template) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_api(prefect_server: PrefectServer) -> str:
    """The session server's API URL, ``http://127.0.0.1:PORT/api``."""
    return prefect_server.api_url


@pytest.fixture(scope="session")
def prefect_client_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PREFECT_HOME of this process while orchestrated (not the developer's ~/.prefect)."""
    return tmp_path_factory.mktemp("prefect-client-home")


@pytest.fixture
def orchestrated(
    monkeypatch: pytest.MonkeyPatch, prefect_api: str, prefect_client_home: Path
) -> Iterator[str]:
    """Run this test's flows as real flow runs on the session server; yields the API URL.

    Two switches, because they are read in two places: ``flows.runtime`` (and any
    subprocess) looks at ``os.environ``, while Prefect in this process read its settings
    once, when it was imported; ``temporary_settings`` replaces those for the test. The
    log level too was applied at import, to the ``prefect`` logger, so it is set there.
    """
    import logging

    from prefect.settings import temporary_settings

    env = {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(prefect_client_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    updates = {
        "api.url": prefect_api,
        "api.key": None,
        "home": prefect_client_home,
        "server.analytics_enabled": False,
        "logging.level": "WARNING",
    }
    prefect_logger = logging.getLogger("prefect")
    level = prefect_logger.level
    prefect_logger.setLevel(logging.WARNING)
    try:
        with temporary_settings(updates=updates):
            yield prefect_api
    finally:
        prefect_logger.setLevel(level)


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")
