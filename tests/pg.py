"""A throwaway PostgreSQL 15 server for integration tests (the real server, no mock).

The server runs as its own unprivileged user (``postgres``; the tests run as root) with a
private unix-socket folder and no TCP listener, so tests never meet a developer's server:

    initdb(datadir)                       # a fresh cluster (trust auth for local sockets)
    with running(datadir) as server:      # pg_ctl start -w, log to a file; stop -m fast always
        with server.connect() as conn: ...
        ops.add_machine(..., apps=[f"postgres:{server.conninfo}"])

    with start_on_copy(restored_datadir) as copy:   # a restored copy of a *running* cluster
        copy.recovered, copy.recovery_lines, copy.wal_replayed_bytes, copy.problems

Folders the server reads or writes (its socket folder, log, data directory and every folder
above them) must be reachable by that user: pytest's ``tmp_path`` is not (``/tmp/pytest-of-root``
is mode 0700), so use ``reachable_dir()`` for images and mount points.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.s3server import free_port

PG_BIN = Path(os.environ.get("R2B_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = os.environ.get("R2B_PG_USER", "postgres")
START_TIMEOUT_S = 60

# No automatic checkpoints during a test: only the ones r2b asks for (or the test) happen, so
# what a restored copy replays is known. Small memory; checkpoints in the log.
QUIET_SETTINGS: dict[str, str] = {
    "shared_buffers": "16MB",
    "max_connections": "20",
    "checkpoint_timeout": "1h",
    "max_wal_size": "4GB",
    "log_checkpoints": "on",
}

_SEVERITY = re.compile(r"\b(DEBUG\d?|LOG|INFO|NOTICE|WARNING|ERROR|FATAL|PANIC):\s")
# How crash recovery finds the end of the WAL: LOG lines that are normal, not damage.
_END_OF_WAL = re.compile(
    r"invalid record length at [0-9A-F]+/[0-9A-F]+: (wanted \d+, got 0|expected at least \d+, "
    r"got 0)|record with zero length at|invalid magic number 0000 in log segment|"
    r"record with incorrect prev-link|contrecord is requested by"
)
_DAMAGE = re.compile(r"corrupt|invalid|checksum|could not|unexpected|incorrect", re.IGNORECASE)
_RECOVERY = re.compile(
    r"not properly shut down|automatic recovery|redo (starts|done|is not required)|"
    r"interrupted|recovery|checkpoint record|invalid record length|record with"
)
_REDO_START = re.compile(r"redo starts at ([0-9A-F]+/[0-9A-F]+)")
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_REDO_ELAPSED = re.compile(r"redo done at .*elapsed: ([0-9.]+) s")


def unavailable() -> str | None:
    """Why a real PostgreSQL cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (to run PostgreSQL as its own user and to loop-mount disks)"
    if not (PG_BIN / "postgres").exists():
        return f"no PostgreSQL server binaries in {PG_BIN} (set R2B_PG_BIN)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} user to run PostgreSQL as (useradd -r {PG_USER})"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


def lsn(text: str) -> int:
    """A WAL position ``X/Y`` as a byte number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def pg_owner() -> tuple[int, int]:
    entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


def give_to_postgres(path: Path, mode: int = 0o700) -> Path:
    uid, gid = pg_owner()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def reachable_dir(prefix: str = "r2b-pg-") -> Path:
    """A new folder under the system temp dir that the server's user can traverse (0711)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def as_postgres(
    argv: Sequence[str | os.PathLike[str]], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the server's user; a failure is a RuntimeError with the output."""
    full = ["runuser", "-u", PG_USER, "--", *(os.fspath(a) for a in argv)]
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(full)} failed (exit {proc.returncode}): {proc.stderr.strip()} "
            f"{proc.stdout.strip()[-2000:]}"
        )
    return proc


def initdb(datadir: Path) -> Path:
    """A fresh cluster in ``datadir`` (created, or empty), owned by the server's user."""
    datadir.mkdir(parents=True, exist_ok=True)
    give_to_postgres(datadir)
    as_postgres(
        [
            PG_BIN / "initdb",
            "-D",
            datadir,
            "-U",
            PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # the tests freeze or sync the filesystem themselves
            "--no-instructions",
        ]
    )
    return datadir


@dataclass
class PgServer:
    """A running server: its data directory, socket folder, port and log."""

    datadir: Path
    sockdir: Path
    port: int
    log: Path
    startup_s: float
    log_text: str = ""  # the whole log, kept when the server stops

    @property
    def conninfo(self) -> str:
        """A libpq connection string for the ``postgres`` database (as r2b's --app takes it)."""
        return self.conninfo_for("postgres")

    def conninfo_for(self, dbname: str) -> str:
        return f"host={self.sockdir} port={self.port} dbname={dbname} user={PG_USER}"

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> Any:
        import psycopg

        return psycopg.connect(self.conninfo_for(dbname), autocommit=autocommit, connect_timeout=10)

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return self.log_text

    def log_lines(self) -> list[str]:
        return self.read_log().splitlines()

    def current_lsn(self) -> int:
        with self.connect() as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        return lsn(row[0])


def _options(sockdir: Path, port: int, settings: Mapping[str, str]) -> str:
    parts = ["-c listen_addresses=''", f"-c unix_socket_directories={sockdir}", f"-p {port}"]
    parts += [f"-c {name}={value}" for name, value in settings.items()]
    return " ".join(parts)


def stop(datadir: Path) -> None:
    """Stop the server of ``datadir`` (fast shutdown, then immediate); quiet when not running."""
    for mode in ("fast", "immediate"):
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            as_postgres([PG_BIN / "pg_ctl", "stop", "-D", datadir, "-m", mode, "-w", "-t", "30"])
            return
        if not (datadir / "postmaster.pid").exists():
            return


@contextlib.contextmanager
def running(datadir: Path, settings: Mapping[str, str] | None = None) -> Iterator[PgServer]:
    """Start a server on ``datadir`` (``pg_ctl start -w``); stop it (fast) on the way out."""
    rundir = give_to_postgres(reachable_dir("r2b-pgrun-"), 0o755)
    (rundir / "sock").mkdir()
    sockdir = give_to_postgres(rundir / "sock")
    log = rundir / "server.log"
    port = free_port()
    options = _options(sockdir, port, {**QUIET_SETTINGS, **(settings or {})})
    started = time.perf_counter()
    server = PgServer(datadir, sockdir, port, log, 0.0)
    try:
        try:
            as_postgres(
                [PG_BIN / "pg_ctl", "start", "-D", datadir, "-l", log, "-w", "-t",
                 str(START_TIMEOUT_S), "-o", options],
                timeout=START_TIMEOUT_S + 10,
            )  # fmt: skip
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n--- server log ---\n{server.read_log()[-4000:]}") from None
        server.startup_s = time.perf_counter() - started
        yield server
    finally:
        stop(datadir)
        server.log_text = server.read_log()
        shutil.rmtree(rundir, ignore_errors=True)


@dataclass
class Recovered:
    """A server started on a restored data directory, and what its log says of recovery."""

    server: PgServer
    recovered: bool  # the log shows crash recovery (the copy was of a running server)
    recovery_lines: list[str]
    redo_start: int | None  # WAL positions of the replay, when there was one
    redo_end: int | None
    problems: list[str] = field(default_factory=list)  # lines that speak of damage

    @property
    def wal_replayed_bytes(self) -> int:
        if self.redo_start is None or self.redo_end is None:
            return 0
        return self.redo_end - self.redo_start

    @property
    def startup_s(self) -> float:
        return self.server.startup_s

    @property
    def redo_elapsed_s(self) -> float | None:
        """The replay's own duration as the server logs it ("redo done at ... elapsed: X s")."""
        for line in self.recovery_lines:
            if m := _REDO_ELAPSED.search(line):
                return float(m.group(1))
        return None


def problems_in(lines: Sequence[str]) -> list[str]:
    """Log lines of severity WARNING and above, or that speak of damage; the normal ways crash
    recovery finds the end of the WAL are not problems."""
    found = []
    for line in lines:
        severity = _SEVERITY.search(line)
        level = severity.group(1) if severity else ""
        serious = level in ("WARNING", "ERROR", "FATAL", "PANIC")
        if serious or (_DAMAGE.search(line) and not _END_OF_WAL.search(line)):
            found.append(line)
    return found


def recovery_of(lines: Sequence[str]) -> tuple[bool, list[str], int | None, int | None]:
    wanted = [line for line in lines if _RECOVERY.search(line)]
    start = next((m.group(1) for line in lines if (m := _REDO_START.search(line))), None)
    done = next((m.group(1) for line in lines if (m := _REDO_DONE.search(line))), None)
    recovered = start is not None or any("automatic recovery" in line for line in lines)
    return (
        recovered,
        wanted,
        lsn(start) if start else None,
        lsn(done) if done else None,
    )


@contextlib.contextmanager
def start_on_copy(datadir: Path, settings: Mapping[str, str] | None = None) -> Iterator[Recovered]:
    """Start a server on a restored copy of a data directory and read its recovery.

    A copy of a running cluster still holds ``postmaster.pid`` naming the original server's
    process; on the original host that file is stale, so it is removed (PostgreSQL's own base
    backups leave it out for the same reason) — else a server still running on this host
    under the same user would make the copy refuse to start.
    """
    (datadir / "postmaster.pid").unlink(missing_ok=True)
    with running(datadir, settings) as server:
        lines = server.log_lines()
        recovered, wanted, start, end = recovery_of(lines)
        yield Recovered(server, recovered, wanted, start, end, problems_in(lines))
