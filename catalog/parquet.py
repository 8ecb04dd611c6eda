"""A backup's catalog as one Parquet object beside it: ``backups/<backup>/catalog.parquet``.

Rows sorted by path (so lookups and ``ls`` stay fast after loading), zstd-compressed, with
``format``, ``version``, ``backup`` and ``partitions`` (JSON) in the schema metadata: the file
describes itself, and the backup server's DuckDB database can be rebuilt from the store alone.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.schema import CATALOG_FORMAT, CATALOG_SCHEMA, CATALOG_VERSION
from r2b.errors import CorruptData
from r2b.tables import check_format


def parquet_bytes(
    table: pa.Table, schema: pa.Schema, meta: dict[str, str], row_group_size: int = 256 * 1024
) -> bytes:
    """``table`` cast to ``schema`` as a zstd Parquet file whose schema metadata is ``meta``
    (which names its ``format`` and ``version``)."""
    table = table.cast(schema).replace_schema_metadata(meta)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    return sink.getvalue()


def read_parquet(
    data: bytes, key: str, fmt: str, version: int, columns: list[str] | None = None
) -> pa.Table:
    """The ``fmt`` table in ``data`` (object ``key``); ``CorruptData`` if it is not one."""
    try:
        table = pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptData(f"{fmt} {key} is unreadable: {e}") from e
    return check_format(table, key, fmt, version)


def catalog_bytes(table: pa.Table, backup: str, partitions: list[dict[str, Any]]) -> bytes:
    """The Parquet file of ``table`` (``CATALOG_SCHEMA``, sorted by path)."""
    meta = {
        "format": CATALOG_FORMAT,
        "version": str(CATALOG_VERSION),
        "backup": backup,
        "partitions": json.dumps(partitions, sort_keys=True),
    }
    return parquet_bytes(table, CATALOG_SCHEMA, meta)


def read_catalog(data: bytes, key: str, columns: list[str] | None = None) -> pa.Table:
    """The catalog table in ``data`` (object ``key``); ``CorruptData`` if it is not one."""
    return read_parquet(data, key, CATALOG_FORMAT, CATALOG_VERSION, columns)


def catalog_partitions(table: pa.Table) -> list[dict[str, Any]]:
    """The per-partition summary stored in a catalog's metadata."""
    raw = (table.schema.metadata or {}).get(b"partitions", b"[]")
    doc = json.loads(raw)
    return list(doc) if isinstance(doc, list) else []
