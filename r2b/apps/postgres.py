"""PostgreSQL: a checkpoint just before the freeze, and what the server holds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.conninfo

from r2b.errors import QuiesceError

CONNECT_TIMEOUT_S = 10


def _connect(conninfo: str, dbname: str | None = None) -> psycopg.Connection[Any]:
    try:
        if dbname:
            conninfo = psycopg.conninfo.make_conninfo(conninfo, dbname=dbname)
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuiesceError(server_name(conninfo), f"cannot connect: {first}") from None


def server_name(conninfo: str) -> str:
    """``postgres:HOST:PORT`` for messages (never the password)."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "postgres"
    return f"postgres:{parts.get('host', 'localhost')}:{parts.get('port', 5432)}"


def describe(conninfo: str) -> dict[str, Any]:
    """Server version, data directory, databases and their tables with sizes."""
    with _connect(conninfo) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        datadir = conn.execute("SHOW data_directory").fetchone()
        names = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname"
            )
        ]
    databases = [{"name": name, "tables": _tables(conninfo, name)} for name in names]
    return {
        "version": version[0] if version else "",
        "data_directory": datadir[0] if datadir else "",
        "databases": databases,
        "files": [datadir[0]] if datadir else [],
    }


def _tables(conninfo: str, dbname: str) -> list[dict[str, Any]]:
    with _connect(conninfo, dbname) as conn:
        rows = conn.execute(
            # reltuples is -1 (or 0) until ANALYZE: the statistics collector's live-tuple
            # count knows better for fresh tables
            "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid), "
            "greatest(c.reltuples::bigint, coalesce(st.n_live_tup, 0)) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
            "'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
        )
        return [
            {"schema": s, "name": t, "bytes": b, "rows_estimate": max(r, 0)} for s, t, b, r in rows
        ]


@contextlib.contextmanager
def checkpointed(conninfo: str) -> Iterator[None]:
    """``CHECKPOINT`` right before the freeze, so recovery from the snapshot replays little.

    The data directory and its WAL are frozen together with the filesystem, which PostgreSQL
    documents as a valid base for crash recovery; the checkpoint keeps that recovery short.
    """
    with _connect(conninfo) as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error as e:
            raise QuiesceError(server_name(conninfo), f"CHECKPOINT failed: {e}") from None
        yield
