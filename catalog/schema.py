"""The file catalog's schema (format ``r2b.catalog``, version 1): one row per file, directory,
symlink or other entry of every indexed filesystem of a backup.

Columns (``CATALOG_SCHEMA``):

- ``backup``, ``machine``, ``disk``: whose entry it is;
- ``partition``: ``p1``, ``p2``... (the partition's number in its table, as Linux numbers it:
  GPT entry number; MBR primaries 1-4, logical partitions from 5), ``""`` for a filesystem
  directly on the disk; ``fs``: ``ext4``, ``fat32``, ``ntfs``...;
- ``path``: absolute, as users see it (``/etc/hosts``, ``/p2/etc/hosts``, ``/disk1/p2/...``:
  see ``r2b.mount.indexer``); ``parent`` and ``name`` split it (``ls`` asks ``parent``);
- ``type``: ``file``, ``dir``, ``symlink``, ``fifo``, ``socket``, ``chardev``, ``blockdev``,
  ``other``; ``size`` in bytes; ``mode`` (permission bits, 0o7777), ``uid``, ``gid``;
  ``mtime``, ``ctime`` (UTC, ns); ``inode`` (the filesystem's metadata address);
- ``link``: a symlink's target as stored;
- ``storage``, how a file's bytes are found again:
  ``extents`` — in ``extents``: ``(file_offset, disk_offset, length)`` byte runs on the *disk*
  (partition offset included), ascending by ``file_offset``; bytes of ``[0, size)`` no extent
  covers are holes (sparse, or unwritten: they read as zeros);
  ``inline`` — too small to have extents (ext4 inline data, NTFS resident ``$DATA``): the bytes
  are in ``inline`` (at most a few hundred bytes);
  ``fs`` — the bytes need the filesystem driver (NTFS compressed or encrypted data): restore
  reads them through The Sleuth Kit from the image;
  ``none`` — nothing to read (directories, symlinks, empty or all-hole files);
- ``note``: why something is missing (``not indexed: ...`` on the row of a partition whose
  filesystem could not be read).

Names are decoded as UTF-8; a byte that is not UTF-8 is written ``\\xNN`` (Python's
``backslashreplace``), and a ``/`` inside a name (possible only in a crafted filesystem) is
written ``\\x2f``, so a name is always one path component. The Parquet file carries
``format``, ``version``, ``backup`` and ``partitions`` (JSON) in its schema metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

CATALOG_FORMAT = "r2b.catalog"
CATALOG_VERSION = 1

EXTENT_TYPE = pa.struct(
    [("file_offset", pa.uint64()), ("disk_offset", pa.uint64()), ("length", pa.uint64())]
)
TIME_TYPE = pa.timestamp("ns", tz="UTC")

CATALOG_SCHEMA = pa.schema(
    [
        ("backup", pa.string()),
        ("machine", pa.string()),
        ("disk", pa.string()),
        ("partition", pa.string()),
        ("fs", pa.string()),
        ("path", pa.string()),
        ("parent", pa.string()),
        ("name", pa.string()),
        ("type", pa.string()),
        ("size", pa.uint64()),
        ("mode", pa.uint32()),
        ("uid", pa.uint32()),
        ("gid", pa.uint32()),
        ("mtime", TIME_TYPE),
        ("ctime", TIME_TYPE),
        ("inode", pa.uint64()),
        ("link", pa.string()),
        ("storage", pa.string()),
        ("extents", pa.list_(EXTENT_TYPE)),
        ("inline", pa.binary()),
        ("note", pa.string()),
    ]
)

# What the backup server's DuckDB keeps of each row (not the bulky extents and inline bytes).
DB_COLUMNS = [f.name for f in CATALOG_SCHEMA if f.name not in ("extents", "inline")]

Extent = tuple[int, int, int]  # file_offset, disk_offset, length


def split_path(path: str) -> tuple[str, str]:
    """``(parent, name)`` of an absolute catalog path; the root's parent is ``""``."""
    if path == "/":
        return "", ""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def join_path(parent: str, name: str) -> str:
    return f"{parent}{name}" if parent.endswith("/") else f"{parent}/{name}"


# The order of a row in ``RowBuffer.rows``: every column but backup and machine (constant).
ROW_FIELDS = tuple(f.name for f in CATALOG_SCHEMA if f.name not in ("backup", "machine"))
Row = tuple[object, ...]


@dataclass
class RowBuffer:
    """Catalog rows being collected as tuples in ``ROW_FIELDS`` order (one ``append`` per
    entry: the walker's hot path), turned into one sorted Arrow table at the end.

    ``mark``/``rollback`` drop the rows of a filesystem that failed halfway.
    """

    machine: str
    backup: str
    rows: list[Row] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        *,
        disk: str,
        partition: str,
        fs: str,
        path: str,
        type: str,
        size: int = 0,
        mode: int = 0,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
        ctime: int | None = None,
        inode: int = 0,
        link: str | None = None,
        storage: str = "none",
        extents: list[Extent] | None = None,
        inline: bytes | None = None,
        note: str | None = None,
    ) -> None:
        """One row by name (the walker appends tuples to ``rows`` directly)."""
        parent, name = split_path(path)
        self.rows.append(
            (
                disk, partition, fs, path, parent, name, type, size, mode, uid, gid,
                mtime, ctime, inode, link, storage, extents, inline, note,
            )
        )  # fmt: skip

    def mark(self) -> int:
        return len(self.rows)

    def rollback(self, mark: int) -> None:
        del self.rows[mark:]

    def table(self) -> pa.Table:
        """The rows as a ``CATALOG_SCHEMA`` table, sorted by path."""
        n = len(self.rows)
        arrays: dict[str, pa.Array] = {
            "backup": pa.array([self.backup] * n, pa.string()),
            "machine": pa.array([self.machine] * n, pa.string()),
        }
        columns = list(zip(*self.rows, strict=True)) if n else [() for _ in ROW_FIELDS]
        for name, values in zip(ROW_FIELDS, columns, strict=True):
            if name == "extents":
                arrays[name] = _extent_lists(values)
            else:
                arrays[name] = pa.array(list(values), CATALOG_SCHEMA.field(name).type)
        table = pa.table([arrays[f.name] for f in CATALOG_SCHEMA], schema=CATALOG_SCHEMA)
        return table.sort_by("path")


def _extent_lists(values: Sequence[object]) -> pa.Array:
    """``list<struct<file_offset, disk_offset, length>>`` from per-row lists (or None)."""
    offsets, flat = [0], []
    for extents in values:
        if isinstance(extents, list):
            flat.extend(extents)
        offsets.append(len(flat))
    columns = list(zip(*flat, strict=True)) if flat else [(), (), ()]
    runs = pa.StructArray.from_arrays(
        [pa.array(list(c), pa.uint64()) for c in columns], fields=list(EXTENT_TYPE)
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), runs)
