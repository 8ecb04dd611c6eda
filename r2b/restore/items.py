"""Restoring application items: a mail message, a SQLite table, a PostgreSQL database or table.

``restore_items`` looks the names up in the backup's item catalog (``items.parquet`` in the
store, ``catalog.items``; a name with ``*``, ``?`` or ``[...]`` that is no item's name is a
glob over the names) and writes one file per item into folder ``DIR``:

- a mail message: ``<Message-ID>.eml``, the message's bytes exactly as the backup holds them
  (a Maildir file; the message's range of an mbox, without its From_ line), read from **only
  the chunks that hold them** (``r2b.mount.filedata``);
- a SQLite table: ``<database file>.<table>.sql``, what SQLite's ``.dump`` gives for that one
  table (``CREATE TABLE``, an ``INSERT`` per row, its indexes and triggers, its AUTOINCREMENT
  counter), from the database restored into a private folder with its ``-wal`` (and any
  ``-journal``) via ``r2b.restore.files``, then opened with ``sqlite3``: read-only, which
  replays the WAL's committed frames into the view (its ``-shm`` is not restored: SQLite
  rebuilds the index from the WAL, where a stale one could mislead it; ``immutable=1`` would
  ignore the WAL);
- a PostgreSQL database or table: ``<database>.sql`` or ``<database>.<schema>.<table>.sql``,
  the output of ``pg_dump`` from a throwaway server started on the data directory restored into
  a private folder (``r2b.restore.pgdump``); one server serves every item of one data directory.

File names are made of the item's own name, with every character but letters, digits and
``._@+=,-`` replaced by ``_`` and leading dots dropped, so a name from inside a backup never
escapes ``DIR`` nor hides in it; two items that would share a name get ``.2``, ``.3``...
Nothing existing is overwritten unless ``overwrite`` (checked for every item before the first
byte is written, ``RestoreConflict``); each file appears under its name only when complete, and
is created through a descriptor of ``DIR`` without following symlinks. Private folders are
removed whatever happens.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from catalog.items import has_item_glob, is_item_name, item_glob_regex, normalize_item, read_items
from catalog.parquet import read_catalog
from r2b.blockio import Layout
from r2b.errors import (
    BadInput,
    ChunkCorrupt,
    ItemNotInBackup,
    ItemRestoreError,
    LocalWriteError,
    NoCatalog,
    NoItems,
    RestoreConflict,
)
from r2b.extents import extent_pieces
from r2b.ids import DiskId
from r2b.image.chunks import ChunkIndex
from r2b.image.format import Manifest
from r2b.image.restore import image_layout
from r2b.mount.filedata import Request, StoredFile, clip, read_ranges
from r2b.restore import pgdump
from r2b.restore.files import restore_files
from r2b.store.base import ObjectStore
from r2b.store.wrappers import CountingStore

MAX_NAME = 180
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=,-]")
_EXTENSION = {
    "mail": ".eml",
    "sqlite-table": ".sql",
    "postgres-database": ".sql",
    "postgres-table": ".sql",
}
_KINDS = "mail:MESSAGE-ID, sqlite:PATH:TABLE, postgres:DATABASE or postgres:DATABASE.SCHEMA.TABLE"


@dataclass
class ItemRestoreResult:
    to: Path
    items: list[dict[str, Any]] = field(default_factory=list)  # item, kind, file, bytes...
    bytes_written: int = 0
    bytes_fetched: int = 0  # read from the store


@dataclass
class _Planned:
    row: dict[str, Any]
    file: str  # name in DIR


def restore_items(
    store: ObjectStore,
    manifest: Manifest,
    names: Sequence[str],
    to: Path,
    overwrite: bool = False,
) -> ItemRestoreResult:
    """Restore the items ``names`` of ``manifest``'s backup into folder ``to`` (module doc)."""
    if not names:
        raise BadInput("name at least one item to restore (" + _KINDS + ")")
    counting = CountingStore(store)
    rows = select_items(item_rows(store, manifest), names, manifest.id)
    plan = _plan(rows)
    if to.exists() and not to.is_dir():
        raise BadInput(f"{to} exists and is not a folder")
    result = ItemRestoreResult(to)
    try:
        to.mkdir(parents=True, exist_ok=True)
        with _Folder(to) as folder:
            conflicts = [str(to / p.file) for p in plan if folder.exists(p.file)]
            if conflicts and not overwrite:
                raise RestoreConflict(conflicts)
            _Restorer(counting, manifest, folder, result).run(plan)
    except OSError as e:
        raise LocalWriteError(e.filename or str(to), e.strerror or str(e)) from e
    result.bytes_fetched = counting.bytes_got
    return result


# --- choosing -------------------------------------------------------------------------------------


def item_rows(store: ObjectStore, manifest: Manifest) -> list[dict[str, Any]]:
    """Every item row of the backup (``catalog.items`` columns), from the store."""
    if not manifest.catalog:
        raise NoCatalog(manifest.id)
    doc = manifest.catalog.get("items")
    if not doc:
        raise NoItems(manifest.id, "its checkpoint declared no applications")
    if not doc.get("key"):
        raise NoItems(manifest.id, str(doc.get("reason") or _app_reasons(doc) or "none found"))
    key = str(doc["key"])
    table = read_items(store.get(key), key)
    table = table.set_column(
        table.schema.get_field_index("mtime"), "mtime", table.column("mtime").cast(pa.int64())
    )
    return list(table.to_pylist())


def _app_reasons(doc: dict[str, Any]) -> str:
    return "; ".join(f"{a['spec']}: {a['reason']}" for a in doc.get("apps", []) if a.get("reason"))


def select_items(
    rows: Sequence[dict[str, Any]], names: Sequence[str], backup: str
) -> list[dict[str, Any]]:
    """The rows ``names`` choose, in the order asked, each row once; an unknown kind is
    ``BadInput``, a name that matches nothing ``ItemNotInBackup``."""
    chosen: dict[int, dict[str, Any]] = {}
    for raw in names:
        if not is_item_name(raw):
            raise BadInput(f"unknown item {raw!r}: items are named {_KINDS}")
        name = normalize_item(raw)
        hits = [i for i, row in enumerate(rows) if row["item"] == name]
        if not hits and has_item_glob(name):
            regex = re.compile(item_glob_regex(name), re.DOTALL)
            hits = [i for i, row in enumerate(rows) if regex.match(row["item"])]
        if not hits:
            raise ItemNotInBackup(backup, raw)
        for index in hits:
            chosen.setdefault(index, rows[index])
    return list(chosen.values())


def safe_name(text: str) -> str:
    """``text`` as one harmless file name (module docstring)."""
    name = _UNSAFE.sub("_", text).lstrip(".")[:MAX_NAME]
    return name or "item"


def _file_name(row: dict[str, Any]) -> str:
    kind = row["kind"]
    if kind == "mail":
        stem = safe_name(row["message_id"] or row["path"].rsplit("/", 1)[-1])
    elif kind == "sqlite-table":
        stem = f"{safe_name(row['path'].rsplit('/', 1)[-1])}.{safe_name(row['table_name'])}"
    elif kind == "postgres-table":
        parts = (row["database"], row["schema_name"], row["table_name"])
        stem = ".".join(safe_name(p) for p in parts)
    else:
        stem = safe_name(row["database"])
    return stem + _EXTENSION.get(kind, ".item")


def _plan(rows: Sequence[dict[str, Any]]) -> list[_Planned]:
    taken: set[str] = set()
    plan = []
    for row in rows:
        name = _file_name(row)
        stem, dot, ext = name.rpartition(".")
        number = 1
        while name in taken:
            number += 1
            name = f"{stem}.{number}{dot}{ext}"
        taken.add(name)
        plan.append(_Planned(row, name))
    return plan


# --- the target folder ----------------------------------------------------------------------------


class _Folder:
    """Files created in ``DIR`` through its descriptor, never following a symlink; each one
    appears under its name only when complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> _Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def exists(self, name: str) -> bool:
        try:
            os.lstat(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def create(self, name: str) -> Iterator[IO[bytes]]:
        temp = f".{name}.r2b-partial-{uuid.uuid4().hex[:8]}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
            os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=self.fd)
            raise


# --- restoring ------------------------------------------------------------------------------------


class _Restorer:
    def __init__(
        self, store: CountingStore, manifest: Manifest, folder: _Folder, result: ItemRestoreResult
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.folder = folder
        self.result = result
        self._chunks: ChunkIndex | None = None

    @property
    def chunks(self) -> ChunkIndex:
        if self._chunks is None:
            self._chunks = ChunkIndex.load(self.store.inner)
        return self._chunks

    def run(self, plan: list[_Planned]) -> None:
        mail = [p for p in plan if p.row["kind"] == "mail"]
        if mail:
            self._mail(mail)
        for kind, restore in (("sqlite-table", self._sqlite), ("postgres", self._postgres)):
            groups: dict[str, list[_Planned]] = {}
            for planned in plan:
                if planned.row["kind"].startswith(kind):
                    groups.setdefault(planned.row["path"], []).append(planned)
            for path, members in groups.items():
                restore(path, members)

    def _done(self, planned: _Planned, written: int, **extra: Any) -> None:
        row = planned.row
        self.result.items.append(
            {"item": row["item"], "kind": row["kind"], "file": str(self.result.to / planned.file),
             "bytes": written, "backup_path": row["path"], **extra}
        )  # fmt: skip
        self.result.bytes_written += written

    # mail

    def _mail(self, plan: list[_Planned]) -> None:
        files = _ImageFiles(self.store, self.manifest, self.chunks)
        stored = files.rows({p.row["path"] for p in plan})
        requests = [(stored[p.row["path"]], p.row["offset"], p.row["length"]) for p in plan]
        for planned, data in zip(plan, files.read(requests), strict=True):
            if len(data) != planned.row["length"]:
                raise ItemRestoreError(planned.row["item"], "the message lies past its file's end")
            with self.folder.create(planned.file) as out:
                out.write(data)
            self._done(planned, len(data), folder=planned.row["folder"])

    # SQLite

    def _sqlite(self, db: str, plan: list[_Planned]) -> None:
        first = plan[0].row["item"]
        with tempfile.TemporaryDirectory(prefix="r2b-sqlite-") as work:
            present = _catalog_paths(self.store, self.manifest, {db, f"{db}-wal", f"{db}-journal"})
            if db not in present:
                raise ItemRestoreError(first, f"the database file {db} is not in the backup")
            restore_files(self.store.inner, self.manifest, sorted(present), Path(work),
                          chunks=self.chunks)  # fmt: skip
            local = Path(work, *db.strip("/").split("/"))
            local.parent.chmod(local.parent.stat().st_mode | 0o700)  # room for the -shm
            conn = open_snapshot_db(first, local, f"{db}-journal" in present)
            try:
                for planned in plan:
                    table = planned.row["table_name"]
                    with self.folder.create(planned.file) as out:
                        count = dump_table(planned.row["item"], conn, table, out)
                        written = out.tell()
                    self._done(planned, written, rows=count)
            finally:
                conn.close()

    # PostgreSQL

    def _postgres(self, datadir: str, plan: list[_Planned]) -> None:
        first = plan[0].row["item"]
        files = _ImageFiles(self.store, self.manifest, self.chunks)
        version = files.rows({f"{datadir}/PG_VERSION"}, missing_ok=True)
        if not version:
            raise ItemRestoreError(first, f"{datadir} holds no PostgreSQL data directory")
        major = files.read([(version[f"{datadir}/PG_VERSION"], 0, 64)])[0].decode().strip()
        bin_dir = pgdump.pg_bin(first, major)
        with tempfile.TemporaryDirectory(prefix="r2b-pg-") as work:
            restore_files(self.store.inner, self.manifest, [datadir], Path(work, "data"),
                          chunks=self.chunks)  # fmt: skip
            local = Path(work, "data", *datadir.strip("/").split("/"))
            with pgdump.throwaway_server(first, local, Path(work), bin_dir) as server:
                self._dump_all(plan, server, bin_dir)

    def _dump_all(self, plan: list[_Planned], server: pgdump.Server, bin_dir: Path) -> None:
        users: dict[str, str] = {}
        for planned in plan:
            row = planned.row
            database = row["database"]
            if database not in users:
                users[database] = pgdump.connectable_user(
                    row["item"], server, database, _role_candidates(row["app"])
                )
            table = (row["schema_name"], row["table_name"]) if row["table_name"] else None
            with self.folder.create(planned.file) as out:
                pgdump.dump(row["item"], bin_dir, server, users[database], database, table, out)
                written = out.tell()
            self._done(planned, written)


def _role_candidates(app: str) -> list[str]:
    """Roles to try on a restored cluster: the one r2b's agent used, then the usual ones."""
    import psycopg.conninfo

    conninfo = app.partition(":")[2]
    try:
        user = psycopg.conninfo.conninfo_to_dict(conninfo).get("user")
    except Exception:  # a spec the agent accepted; a parse failure only loses a candidate
        user = None
    run_as = pgdump.RunAs.for_server(app).name
    return [str(user or ""), os.environ.get(pgdump.PG_USER_ENV, pgdump.DEFAULT_PG_USER), run_as]


def _catalog_paths(store: ObjectStore, manifest: Manifest, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` are files in the backup's file catalog."""
    key = _catalog_key(manifest)
    table = read_catalog(store.get(key), key, columns=["path", "type"])
    hits = table.filter(pc.is_in(table.column("path"), pa.array(sorted(wanted))))
    paths, types = hits.column("path").to_pylist(), hits.column("type").to_pylist()
    return {p for p, t in zip(paths, types, strict=True) if t == "file"}


def _catalog_key(manifest: Manifest) -> str:
    if not manifest.catalog or not manifest.catalog.get("key"):
        raise NoCatalog(manifest.id)
    return str(manifest.catalog["key"])


class _ImageFiles:
    """Catalogued files of a backup image, read by range from only the chunks that hold them."""

    def __init__(self, store: ObjectStore, manifest: Manifest, chunks: ChunkIndex) -> None:
        self.store = store
        self.manifest = manifest
        self.chunks = chunks
        self._layouts: dict[str, tuple[Layout, set[str]]] = {}

    def rows(self, paths: set[str], missing_ok: bool = False) -> dict[str, StoredFile]:
        key = _catalog_key(self.manifest)
        columns = ["path", "type", "disk", "size", "storage", "extents", "inline"]
        table = read_catalog(self.store.get(key), key, columns=columns)
        table = table.filter(pc.is_in(table.column("path"), pa.array(sorted(paths))))
        found = {}
        for row in table.to_pylist():
            if row["type"] == "file":
                extents = tuple(
                    (e["file_offset"], e["disk_offset"], e["length"]) for e in row["extents"] or ()
                )
                found[row["path"]] = StoredFile(
                    row["path"], row["disk"], row["size"], row["storage"], extents, row["inline"]
                )
        if not missing_ok and set(found) != paths:
            raise ItemRestoreError(
                ", ".join(sorted(paths - set(found))[:3]), "not a file in the backup's catalog"
            )
        return found

    def read(self, requests: Sequence[Request]) -> list[bytes]:
        out: list[bytes] = [b""] * len(requests)
        by_disk: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            by_disk.setdefault(request[0].disk, []).append(index)
        for disk, indexes in by_disk.items():
            layout, lost = self._layout(disk)
            chosen = [requests[i] for i in indexes]
            self._check_not_lost(layout, lost, chosen)
            data = read_ranges(self.store, layout, chosen, f"{self.manifest.id}/{disk}")
            for index, value in zip(indexes, data, strict=True):
                out[index] = value
        return out

    def _layout(self, disk: str) -> tuple[Layout, set[str]]:
        if disk not in self._layouts:
            layout, lost = image_layout(self.store, self.manifest, DiskId(disk), self.chunks)
            self._layouts[disk] = (layout, set(lost))
        return self._layouts[disk]

    def _check_not_lost(self, layout: Layout, lost: set[str], requests: Sequence[Request]) -> None:
        """A needed chunk the store has lost would read as zeros: name it instead."""
        if not lost:
            return
        blocks = {
            piece[0]
            for stored, offset, length in requests
            for piece in extent_pieces(clip(stored.extents, offset, length), layout.block_size)
        }
        needed = {layout.digests[b].tobytes().hex() for b in sorted(blocks)}
        if needed & lost:
            bad = sorted(needed & lost)
            raise ChunkCorrupt(bad, [self.manifest.id], "is missing from the chunk index")


# --- SQLite: one table as SQL ---------------------------------------------------------------------


def open_snapshot_db(item: str, path: Path, hot_journal: bool) -> sqlite3.Connection:
    """The restored database, read-only with its WAL replayed (module docstring). A hot
    rollback journal needs a writable connection to be rolled back: the copy is private."""
    mode = "rw" if hot_journal else "ro"
    uri = f"file:{_uri_path(path)}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        conn.text_factory = _text_or_raw
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        raise ItemRestoreError(item, f"the restored database does not open: {e}") from None
    return conn


def _uri_path(path: Path) -> str:
    return str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


class _RawText(bytes):
    """A TEXT value that is not valid UTF-8 (kept as its bytes)."""


def _text_or_raw(data: bytes) -> str | bytes:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return _RawText(data)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: object) -> str:
    """``value`` as an SQLite literal that reads back as the same value and type."""
    if value is None:
        return "NULL"
    if isinstance(value, _RawText):
        return f"CAST(X'{value.hex()}' AS TEXT)"
    if isinstance(value, bytes):
        return f"X'{value.hex()}'"
    if isinstance(value, bool | int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "NULL"  # SQLite stores NaN as NULL
        if math.isinf(value):
            return "1e999" if value > 0 else "-1e999"
        return repr(value)
    text = str(value)
    if "\0" in text:
        return f"CAST(X'{text.encode().hex()}' AS TEXT)"
    return "'" + text.replace("'", "''") + "'"


def dump_table(item: str, conn: sqlite3.Connection, table: str, out: IO[bytes]) -> int:
    """Write ``.dump`` of one table to ``out``; returns the rows written."""
    found = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", [table]
    ).fetchone()
    if found is None or not found[0]:
        raise ItemRestoreError(item, f"the restored database has no table {table!r}")
    quoted = quote_identifier(table)
    columns = [
        str(r[1]) for r in conn.execute(f"PRAGMA table_xinfo({quoted})") if int(r[6]) == 0
    ]  # hidden 0: stored columns (generated ones are recomputed on insert)
    names = ",".join(quote_identifier(c) for c in columns)
    write = out.write
    write(b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n")
    write(f"{found[0]};\n".encode())
    count = 0
    select = f"SELECT {names} FROM {quoted}" if columns else f"SELECT * FROM {quoted}"
    prefix = f"INSERT INTO {quoted}({names}) VALUES(".encode()
    for row in conn.execute(select):
        write(prefix + ",".join(sql_literal(v) for v in row).encode() + b");\n")
        count += 1
    _write_sequence(conn, table, out)
    for (sql,) in conn.execute(
        "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') "
        "AND sql IS NOT NULL ORDER BY type, name",
        [table],
    ):
        write(f"{sql};\n".encode())
    write(b"COMMIT;\n")
    return count


def _write_sequence(conn: sqlite3.Connection, table: str, out: IO[bytes]) -> None:
    """An AUTOINCREMENT table's counter (``sqlite_sequence``), as ``.dump`` keeps it."""
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()
    if not has:
        return
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", [table]).fetchone()
    if row is not None:
        name = sql_literal(table)
        out.write(f"DELETE FROM sqlite_sequence WHERE name = {name};\n".encode())
        out.write(f"INSERT INTO sqlite_sequence VALUES({name}, {int(row[0])});\n".encode())


__all__ = ["ItemRestoreResult", "dump_table", "restore_items", "safe_name", "select_items"]
