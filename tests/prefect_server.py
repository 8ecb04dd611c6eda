"""A real Prefect server for tests: ``prefect server start`` in a subprocess on a free port.

    with running_server(home) as server:
        server.api_url  # "http://127.0.0.1:PORT/api"

The server gets its own ``PREFECT_HOME`` (so its SQLite database and settings are its own) and
an environment stripped of the caller's ``PREFECT_*`` variables (a developer's profile, API URL
or Postgres connection must not leak in); analytics (no internet here) and the UI are off.
Whether it is up is asked of ``GET /api/health``; a server that does not answer in time, or
exits, raises ``RuntimeError`` with the tail of its log.

About half of a first start (12-18 s here) is the database migrations. Passing
``database_template`` makes it cheaper: when that file exists it is copied in as the server's
database, so only the app itself starts; when it does not, it is written once the freshly
migrated server is healthy (before any test used it), for the next session.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

HEALTH_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
_LOG_TAIL = 4000
_DB_NAME = "prefect.db"
_PORT_ATTEMPTS = 3

# Set for the server process on top of the cleaned environment.
_SERVER_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    # The server's own logs go to its log file; INFO keeps it small and readable.
    "PREFECT_SERVER_LOGGING_LEVEL": "INFO",
    # Registering Prefect's ~60 built-in block types takes seconds on every start. A block
    # that a test saves registers its own type and schema (Block.save does), so nothing
    # r2b does needs them up front.
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
}


@dataclass
class PrefectServer:
    """A running ``prefect server start`` process."""

    api_url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path
    startup_s: float

    def log_tail(self, size: int = _LOG_TAIL) -> str:
        """The last ``size`` characters of the server's combined stdout and stderr."""
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError as e:
            return f"(no log: {e})"

    def stop(self) -> None:
        """Terminate the server (its process group), wait for it, kill it if it lingers."""
        if self.process.poll() is not None:
            return
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group this module started the server in."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the server is its group's leader (start_new_session)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(api_url: str) -> bool:
    """Whether ``GET {api_url}/health`` answers 200 with ``true``."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200 and response.read().strip() == b"true")
    except (urllib.error.URLError, OSError):
        return False


def server_env(home: Path) -> dict[str, str]:
    """The server's environment: the caller's without any ``PREFECT_*``, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(_SERVER_ENV)
    env["PREFECT_HOME"] = str(home)
    return env


def _command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]
    return [*base, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]


def _launch(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("ab") as out:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            _command(port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(home),
            cwd=home,
            start_new_session=True,
        )
    return process, f"http://127.0.0.1:{port}/api"


def _port_taken(log_text: str) -> bool:
    # Prefect checks the port first ("Port N is already in use. ..."); uvicorn, should it
    # lose the race after that check, says "[Errno 98] ... address already in use".
    return "already in use" in log_text.lower()


def start_server(
    home: Path, *, timeout: float = HEALTH_TIMEOUT_S, database_template: Path | None = None
) -> PrefectServer:
    """Start a server with ``home`` as its PREFECT_HOME and wait until it is healthy.

    A start that loses its port to another process (the port is picked before the server
    binds it) is retried on a new port.
    """
    home.mkdir(parents=True, exist_ok=True)
    fresh = not (home / _DB_NAME).exists()
    templated = fresh and database_template is not None and database_template.is_file()
    if templated:
        assert database_template is not None
        _copy_database(database_template, home / _DB_NAME)
    log = home / "server.log"
    origin = (
        f" (its database was copied from {database_template}: delete that file to start "
        "from a fresh one)"
        if templated
        else ""
    )
    started = time.monotonic()
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        process, api_url = _launch(home, log)
        server = PrefectServer(api_url, home, process, log, 0.0)
        try:
            up = _wait_healthy(server, timeout, last_attempt=attempt == _PORT_ATTEMPTS)
        except BaseException as e:  # also Ctrl-C: never leave the server behind
            server.stop()
            if isinstance(e, RuntimeError):
                raise RuntimeError(
                    f"{e.args[0]}{origin}; log {log}:\n{server.log_tail()}"
                ) from None
            raise
        if up:
            server.startup_s = time.monotonic() - started
            if fresh and not templated and database_template is not None:
                _save_template(home / _DB_NAME, database_template)
            return server
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _wait_healthy(server: PrefectServer, timeout: float, *, last_attempt: bool) -> bool:
    """True once healthy; False if it exited because its port was taken (retry then)."""
    deadline = time.monotonic() + timeout
    while not healthy(server.api_url):
        if server.process.poll() is not None:
            if _port_taken(server.log_tail()) and not last_attempt:
                return False
            raise RuntimeError(
                f"prefect server exited with status {server.process.returncode} "
                "before it was healthy"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"prefect server at {server.api_url} not healthy after {timeout:.0f} s"
            )
        time.sleep(0.1)
    return True


def _copy_database(source: Path, dest: Path) -> None:
    """Copy an SQLite database consistently (also while a server writes to ``source``)."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(dest)) as dst:
        src.backup(dst)


def _save_template(database: Path, template: Path) -> None:
    """Keep a copy of a freshly migrated database as ``template`` (atomically; best effort)."""
    template.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=template.name, suffix=".tmp", dir=template.parent)
    os.close(fd)
    try:
        _copy_database(database, Path(tmp))
        os.replace(tmp, template)  # concurrent sessions: the last complete copy wins
    except (OSError, sqlite3.Error):
        Path(tmp).unlink(missing_ok=True)


def drain_prefect_workers(timeout: float = 10.0) -> None:
    """Send what this process's Prefect workers still hold (logs, events) and stop them.

    Call it before stopping the server: otherwise they try at interpreter exit, against a
    server that is gone, and the process hangs in retries for a minute or more. Like
    ``prefect.testing.utilities.prefect_test_harness``, which does the same. A no-op when
    Prefect was never imported.
    """
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout, at_exit=False)


@contextmanager
def running_server(
    home: Path, *, timeout: float = HEALTH_TIMEOUT_S, database_template: Path | None = None
) -> Iterator[PrefectServer]:
    """A started, healthy server; on exit Prefect's workers are drained, then it is stopped."""
    server = start_server(home, timeout=timeout, database_template=database_template)
    try:
        yield server
    finally:
        try:
            drain_prefect_workers()
        finally:
            server.stop()
