"""Arrow IPC files as r2b stores them: a schema whose metadata names the format and version.

Every table object in the store (journal indexes and bases, chunk and image indexes,
changed-block lists) is written by ``write_table`` and read back by ``read_table``, which
refuses a table of another format or version with ``CorruptData`` naming the object.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.ipc as ipc

from r2b.errors import CorruptData


def write_table(table: pa.Table, schema: pa.Schema) -> bytes:
    """``table`` cast to ``schema`` (which carries ``format`` and ``version`` metadata)."""
    sink = io.BytesIO()
    with ipc.new_file(sink, schema) as writer:
        writer.write_table(table.cast(schema))
    return sink.getvalue()


def read_table(data: bytes, key: str, fmt: str, version: int) -> pa.Table:
    try:
        table = ipc.open_file(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptData(f"{key} is unreadable: {e}") from e
    return check_format(table, key, fmt, version)


def check_format(table: pa.Table, key: str, fmt: str, version: int) -> pa.Table:
    """``table`` if its schema metadata names ``fmt`` at ``version``, else ``CorruptData``."""
    meta = table.schema.metadata or {}
    if meta.get(b"format") != fmt.encode() or meta.get(b"version") != str(version).encode():
        raise CorruptData(f"{key} is not a version-{version} {fmt} table")
    return table
