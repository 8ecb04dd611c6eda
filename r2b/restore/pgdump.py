"""``pg_dump`` of a database or table from a PostgreSQL data directory restored from a backup.

A backup holds the data directory as the frozen filesystem had it: a crash-consistent copy of
a running server (``r2b.apps.postgres``). ``throwaway_server`` starts a private server on a
restored copy — it replays the WAL (crash recovery), as PostgreSQL does after a power cut —
and ``dump`` runs ``pg_dump`` against it; the server is always stopped afterwards.

The throwaway server is nobody's business but ours:

- no TCP (``listen_addresses=''``); its unix socket is in a private folder (mode 0700);
- our own ``pg_hba.conf`` (``local all all trust``: only the socket's owner can reach it) and
  an empty ``pg_ident.conf``, whatever the restored ones say; ``ssl``, archiving and
  ``shared_preload_libraries`` off, small ``shared_buffers``, no autovacuum: the restored
  configuration may name certificates, archive commands or libraries of the original host;
- ``postmaster.pid`` of the original server is removed (it is stale here; PostgreSQL's own
  base backups leave it out), and ``recovery.signal`` (archive recovery would need the
  original's ``restore_command``): the copy recovers from its own WAL and comes up;
- a data directory whose ``postgresql.conf`` lives elsewhere (Debian keeps it in /etc) gets an
  empty one;
- PostgreSQL refuses to run as root: when we are root the data directory is given to, and the
  server run as, ``PG_USER`` (``postgres``; ``R2B_PG_USER``); otherwise it runs as us.

Binaries: ``R2B_PG_BIN`` if set, else ``/usr/lib/postgresql/<major>/bin`` for the major
version the metadata recorded (``PG_MAJOR`` when unknown), else ``pg_ctl`` on ``PATH``.
``pg_dump`` must be at least the server's major version; the same installation's is used.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from r2b.errors import ItemRestoreError, ToolMissing

PG_MAJOR = 15  # the version r2b is built and tested with
PG_BIN_ENV = "R2B_PG_BIN"
PG_USER_ENV = "R2B_PG_USER"
DEFAULT_PG_USER = "postgres"
START_TIMEOUT_S = 300  # crash recovery of a busy server's WAL can take a while
STOP_TIMEOUT_S = 60
PORT = 5432  # only names the socket file: there is no TCP listener
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "unix_socket_permissions": "0700",
    "ssl": "off",
    "archive_mode": "off",
    "shared_preload_libraries": "''",
    "shared_buffers": "32MB",
    "autovacuum": "off",
    "logging_collector": "off",
    "log_destination": "stderr",
}


def pg_bin(item: str, major: str | None = None) -> Path:
    """The folder of ``pg_ctl``, ``postgres`` and ``pg_dump`` (module docstring)."""
    candidates: list[Path] = []
    if os.environ.get(PG_BIN_ENV):
        candidates.append(Path(os.environ[PG_BIN_ENV]))
    else:
        candidates.append(Path(f"/usr/lib/postgresql/{major or PG_MAJOR}/bin"))
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("pg_ctl", "postgres", "pg_dump")):
            return folder
    raise ToolMissing(
        item,
        "pg_dump",
        f"install the PostgreSQL {major or PG_MAJOR} server binaries, or set {PG_BIN_ENV} "
        f"to their folder (looked in {', '.join(str(c) for c in candidates)})",
    )


@dataclass(frozen=True)
class RunAs:
    """Who runs the server: a uid/gid (we are root), or None (ourselves)."""

    uid: int | None
    gid: int | None
    name: str

    @staticmethod
    def for_server(item: str) -> RunAs:
        if os.geteuid() != 0:
            return RunAs(None, None, pwd.getpwuid(os.geteuid()).pw_name)
        name = os.environ.get(PG_USER_ENV, DEFAULT_PG_USER)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ToolMissing(
                item, f"the {name!r} user", f"PostgreSQL will not run as root; create it "
                f"(useradd -r {name}) or set {PG_USER_ENV}"
            ) from None  # fmt: skip
        return RunAs(entry.pw_uid, entry.pw_gid, name)

    def give(self, path: Path) -> None:
        """Make ``path`` (and everything below it) the server user's."""
        if self.uid is None or self.gid is None:
            return
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


@dataclass(frozen=True)
class Server:
    """A running throwaway server: where its socket is, and as whom to connect."""

    sockdir: Path
    port: int
    log: Path


def prepare_datadir(datadir: Path) -> None:
    """The restored copy made startable (module docstring)."""
    for stale in ("postmaster.pid", "recovery.signal"):
        (datadir / stale).unlink(missing_ok=True)
    conf = datadir / "postgresql.conf"
    if not conf.exists():
        conf.write_text("# written by r2b: the original configuration lived elsewhere\n")
    datadir.chmod(0o700)


@contextlib.contextmanager
def throwaway_server(item: str, datadir: Path, work: Path, bin_dir: Path) -> Iterator[Server]:
    """Start a private server on ``datadir`` (a restored copy below ``work``); stop it always."""
    owner = RunAs.for_server(item)
    prepare_datadir(datadir)
    sockdir = work / "sock"
    sockdir.mkdir(mode=0o700)
    hba, ident, log = work / "pg_hba.conf", work / "pg_ident.conf", work / "server.log"
    hba.write_text("local all all trust\n")
    ident.write_text("")
    log.touch()
    work.chmod(0o711)  # the server's user crosses it to reach its files
    for path in (datadir, sockdir, hba, ident, log):
        owner.give(path)
    settings = {**SERVER_SETTINGS, "unix_socket_directories": f"'{sockdir}'",
                "hba_file": f"'{hba}'", "ident_file": f"'{ident}'"}  # fmt: skip
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    start = [str(bin_dir / "pg_ctl"), "start", "-D", str(datadir), "-l", str(log), "-w",
             "-t", str(START_TIMEOUT_S), "-o", f"-p {PORT} {options}"]  # fmt: skip
    try:
        _run(item, start, owner, work, START_TIMEOUT_S + 30, log)
        yield Server(sockdir, PORT, log)
    finally:
        _stop(item, bin_dir, datadir, owner, work)


def _stop(item: str, bin_dir: Path, datadir: Path, owner: RunAs, work: Path) -> None:
    for mode in ("fast", "immediate"):
        stop = [str(bin_dir / "pg_ctl"), "stop", "-D", str(datadir), "-m", mode, "-w",
                "-t", str(STOP_TIMEOUT_S)]  # fmt: skip
        if not (datadir / "postmaster.pid").exists():
            return
        with contextlib.suppress(ItemRestoreError):
            _run(item, stop, owner, work, STOP_TIMEOUT_S + 10, None)
            return


def _run(
    item: str, argv: list[str], owner: RunAs, cwd: Path, timeout: float, log: Path | None
) -> None:
    """Run a server command as the server's user; a failure names the server's last words."""
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            user=owner.uid,
            group=owner.gid,
            extra_groups=[] if owner.uid is not None else None,
            env=_server_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        took = f"{Path(argv[0]).name} {argv[1]} took over {timeout:g} s"
        raise ItemRestoreError(item, took) from None
    if done.returncode != 0:
        said = _last_line(log.read_text(errors="replace") if log else "") or _last_line(
            done.stderr + done.stdout
        )
        raise ItemRestoreError(item, f"the throwaway PostgreSQL server failed to {argv[1]}: {said}")


def _server_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("LANG", "C")
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    serious = [line for line in lines if any(w in line for w in ("FATAL", "ERROR", "PANIC"))]
    return (serious or lines or ["(no output)"])[-1][:500]


def connectable_user(item: str, server: Server, database: str, candidates: list[str]) -> str:
    """The first of ``candidates`` the server lets in to ``database`` (the roles of the restored
    cluster are the original's: its bootstrap superuser need not be called postgres)."""
    import psycopg

    reasons = []
    for user in dict.fromkeys(c for c in candidates if c):
        try:
            with psycopg.connect(_conninfo(server, database, user), connect_timeout=30):
                return user
        except psycopg.Error as e:
            reasons.append(f"{user}: {_last_line(str(e))}")
    raise ItemRestoreError(item, "no role could connect: " + "; ".join(reasons))


def _conninfo(server: Server, database: str, user: str) -> str:
    import psycopg.conninfo

    return psycopg.conninfo.make_conninfo(
        host=str(server.sockdir), port=str(server.port), dbname=database, user=user
    )


def table_pattern(schema: str, table: str) -> str:
    """A ``pg_dump -t`` pattern naming exactly ``schema.table`` (quoted: no case folding, and
    ``*``, ``?`` and ``.`` inside the names are literal)."""

    def quoted(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return f"{quoted(schema)}.{quoted(table)}"


def dump(
    item: str,
    bin_dir: Path,
    server: Server,
    user: str,
    database: str,
    table: tuple[str, str] | None,
    out: IO[bytes],
) -> None:
    """``pg_dump`` (plain SQL) of ``database``, or only of ``table`` (schema, name), into
    ``out``. ``pg_dump`` itself runs as us: it is only a client of the socket."""
    argv = [str(bin_dir / "pg_dump"), "--no-password", "-d", _conninfo(server, database, user)]
    if table is not None:
        argv += ["--strict-names", "-t", table_pattern(*table)]
    done = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        said = _last_line(done.stderr.decode(errors="replace"))
        raise ItemRestoreError(item, f"pg_dump failed: {said}")
