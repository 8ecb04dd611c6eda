"""SQLite: checkpoint the WAL, hold writers during the freeze, list tables."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from r2b.errors import QuiesceError

BUSY_TIMEOUT_S = 10.0


def _connect(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
        )
    except sqlite3.Error as e:
        raise QuiesceError(f"sqlite:{path}", f"cannot open the database: {e}") from None
    return conn


def describe(path: str) -> dict[str, Any]:
    """Tables with row counts and schema, and the files that hold the database."""
    conn = _connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        tables = []
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        ):
            rows = conn.execute(f'SELECT count(*) FROM "{name.replace(chr(34), chr(34) * 2)}"')
            tables.append({"name": name, "rows": rows.fetchone()[0], "schema": sql})
        return {
            "version": sqlite3.sqlite_version,
            "journal_mode": mode,
            "tables": tables,
            "files": [path, f"{path}-wal", f"{path}-shm"] if mode == "wal" else [path],
        }
    except sqlite3.Error as e:
        raise QuiesceError(f"sqlite:{path}", str(e)) from None
    finally:
        conn.close()


def _take_write_lock(conn: sqlite3.Connection, path: str) -> None:
    """``BEGIN IMMEDIATE``, retried every half millisecond until ``BUSY_TIMEOUT_S``.

    SQLite has no fair lock queue and its busy handler sleeps up to 100 ms between tries, so a
    writer committing flat out starves it (measured: no lock in 10 s). Polling catches the
    moments between the writer's transactions.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise QuiesceError(f"sqlite:{path}", str(e)) from None
            if time.monotonic() > deadline:
                raise QuiesceError(
                    f"sqlite:{path}", f"writers did not let go within {BUSY_TIMEOUT_S:g} s: {e}"
                ) from None
        time.sleep(0.0005)


@contextlib.contextmanager
def hold_writers(path: str) -> Iterator[None]:
    """Checkpoint the WAL into the main file, then keep a write lock until the thaw.

    The checkpoint is PASSIVE: it copies what it can without waiting for readers or writers.
    (TRUNCATE waited up to the busy timeout while holding SQLite's checkpoint lock, which
    stalled the application's writers and its own checkpoints: a WAL grew to ENOSPC in a
    test.) A write that slips in afterwards lands in the WAL, which is frozen together with
    the database file, so the copy is consistent either way, only with WAL to replay.
    ``BEGIN IMMEDIATE`` then takes the RESERVED lock: readers go on, writers wait (their busy
    timeout) until we roll back after the thaw. A writer that holds the lock longer than
    ``BUSY_TIMEOUT_S`` makes the quiesce fail rather than wait for ever.
    """
    conn = _connect(path)
    try:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError as e:
            raise QuiesceError(f"sqlite:{path}", f"cannot checkpoint the WAL: {e}") from None
        _take_write_lock(conn, path)
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()
