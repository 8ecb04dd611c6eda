"""The application-item catalog (format ``r2b.items``, version 1): one row per mail message,
SQLite table, PostgreSQL database and PostgreSQL table of a backup, next to its file catalog
as ``backups/<backup>/items.parquet`` (built by ``r2b.apps.items`` from the metadata the app
agent wrote onto the disk, read from the snapshot).

Item names (CLI.md): ``mail:MESSAGE-ID`` (the Message-ID without its angle brackets; a
message without one is named by where it is: ``mail:/PATH`` for a Maildir file,
``mail:/PATH:OFFSET`` inside an mbox), ``sqlite:PATH:TABLE`` (PATH as the machine sees the
database), ``postgres:DATABASE`` and ``postgres:DATABASE.SCHEMA.TABLE``. A name is not unique
in a backup when a message was filed twice: each copy is a row of its own.

Columns (``ITEMS_SCHEMA``):

- ``backup``, ``machine``; ``item`` (the name); ``kind``: ``mail``, ``sqlite-table``,
  ``postgres-database``, ``postgres-table``; ``app``: the application spec it came from;
- ``path``: the catalog path (``catalog.schema``) of the file or folder that holds it: the
  message file (Maildir), the mbox, the SQLite database, the PostgreSQL data directory;
- ``offset``, ``length``: where a message's bytes are inside ``path`` (0 and the file's size
  for a Maildir message); null for tables;
- mail: ``folder`` (``INBOX``, ``INBOX.Sent``... for Maildir++; the file name for an mbox),
  ``message_id``, ``sender`` (From), ``recipients`` (To), ``subject`` (RFC 2047 decoded),
  parsed from the message's first bytes;
- ``mtime``: the message's Date (else its file's mtime); a SQLite database file's mtime; the
  time the PostgreSQL metadata was captured;
- ``size``: a message's bytes; a PostgreSQL table's bytes on disk (with its indexes and
  TOAST), a database's sum of them; null for SQLite tables (the metadata has no size);
- ``database``, ``schema_name``, ``table_name``, ``rows`` (exact for SQLite, the server's
  estimate for PostgreSQL), ``sql`` (a SQLite table's ``CREATE TABLE``);
- ``note``: what is doubtful (headers cut short, no Message-ID...).

The Parquet file carries ``format``, ``version``, ``backup`` and ``apps`` (JSON: what each
application gave, or why not) in its schema metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from catalog.parquet import parquet_bytes, read_parquet
from catalog.schema import TIME_TYPE
from r2b.restore.select import glob_text_regex

ITEMS_FORMAT = "r2b.items"
ITEMS_VERSION = 1
ITEM_PREFIXES = ("mail:", "sqlite:", "postgres:")

ITEMS_SCHEMA = pa.schema(
    [
        ("backup", pa.string()),
        ("machine", pa.string()),
        ("item", pa.string()),
        ("kind", pa.string()),
        ("app", pa.string()),
        ("path", pa.string()),
        ("offset", pa.uint64()),
        ("length", pa.uint64()),
        ("folder", pa.string()),
        ("message_id", pa.string()),
        ("sender", pa.string()),
        ("recipients", pa.string()),
        ("subject", pa.string()),
        ("mtime", TIME_TYPE),
        ("size", pa.uint64()),
        ("database", pa.string()),
        ("schema_name", pa.string()),
        ("table_name", pa.string()),
        ("rows", pa.int64()),
        ("sql", pa.string()),
        ("note", pa.string()),
    ]
)
ITEM_FIELDS = tuple(f.name for f in ITEMS_SCHEMA if f.name not in ("backup", "machine"))
# What the backup server's DuckDB keeps (restore reads the Parquet in the store).
ITEM_DB_COLUMNS = [f.name for f in ITEMS_SCHEMA if f.name not in ("offset", "length", "sql")]


def items_key(backup: str) -> str:
    return f"backups/{backup}/items.parquet"


def items_table(backup: str, machine: str, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """``rows`` (dicts with ``ITEM_FIELDS`` keys, missing ones null) as a table sorted by item."""
    columns: dict[str, list[Any]] = {
        "backup": [backup] * len(rows),
        "machine": [machine] * len(rows),
    }
    for name in ITEM_FIELDS:
        columns[name] = [row.get(name) for row in rows]
    arrays = [pa.array(columns[f.name], f.type) for f in ITEMS_SCHEMA]
    return pa.table(arrays, schema=ITEMS_SCHEMA).sort_by([("item", "ascending")])


def items_bytes(table: pa.Table, backup: str, apps: list[dict[str, Any]]) -> bytes:
    meta = {
        "format": ITEMS_FORMAT,
        "version": str(ITEMS_VERSION),
        "backup": backup,
        "apps": json.dumps(apps, sort_keys=True),
    }
    return parquet_bytes(table, ITEMS_SCHEMA, meta)


def read_items(data: bytes, key: str, columns: list[str] | None = None) -> pa.Table:
    """The item table in ``data`` (object ``key``); ``CorruptData`` if it is not one."""
    return read_parquet(data, key, ITEMS_FORMAT, ITEMS_VERSION, columns)


# --- names and patterns -------------------------------------------------------------------------


def normalize_item(name: str) -> str:
    """``mail:<id@host>`` → ``mail:id@host`` (Message-IDs are named without their brackets)."""
    if name.startswith("mail:<") and name.endswith(">"):
        return "mail:" + name[len("mail:<") : -1]
    return name


def is_item_name(text: str) -> bool:
    return text.startswith(ITEM_PREFIXES)


def item_glob_regex(pattern: str) -> str:
    """An anchored regular expression (Python ``re`` and DuckDB's RE2 alike) for a glob over
    item names, subjects and senders: ``*`` any run of characters (``/`` and ``:`` too)."""
    return "^" + glob_text_regex(pattern, within_component=False) + "$"


def has_item_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
