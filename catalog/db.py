"""The backup server's catalog: a DuckDB database at ``$R2B_HOME/catalog.duckdb``.

It holds, for every backup whose catalog it has loaded, the rows of that catalog's Parquet
(not the extents and inline bytes, which restore reads from the Parquet in the store), split
in two so a search looks at each path once, not once per backup:

- ``paths``: one row per distinct (machine, path) ever seen, with its parent and name;
- ``files``: one row per entry per backup (``path_id``, type, size, mode, owner, times...),
  appended backup by backup in path order, so DuckDB's zone maps narrow a lookup to one
  backup without an index;
- ``backups``: one row per loaded backup. Times are integer nanoseconds (``mtime_ns``);
- ``items``: the application items of each backup (``catalog.items``: mail messages, SQLite and
  PostgreSQL tables), without the bytes' offsets and table schemas, which restore reads from
  the Parquet in the store.

``find`` matches the glob against ``paths`` (a hundred backups of a 120k-file disk: 120k
paths, not 12M rows), keeps the first paths in order, and only then joins their versions.
Items are matched on their name when the pattern starts with ``mail:``, ``sqlite:`` or
``postgres:`` (then no file is), else, for a pattern without ``/``, on a message's Message-ID,
subject and sender (those two ignoring case) and on a table's name.

The store is the source of truth; this database is a cache of it. ``synced`` compares the
backups that have a manifest and a ``catalog.parquet`` in the store (one LIST) with what is
loaded, loads what is missing, drops what the store no longer has (pruned), and starts over
when the database was filled from another store or by another schema version. Readers open
it read-only and only take the (exclusive) write lock when something must change; DuckDB
allows one writer process or many readers, so a busy database is retried for ``LOCK_WAIT_S``
and then reported ``CatalogBusy``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from catalog.items import (
    ITEM_DB_COLUMNS,
    has_item_glob,
    is_item_name,
    item_glob_regex,
    normalize_item,
    read_items,
)
from catalog.schema import CATALOG_VERSION, DB_COLUMNS
from r2b.errors import CatalogBusy, NoCatalog, PathNotInBackup
from r2b.image.format import BACKUPS_PREFIX, Manifest, manifest_key
from r2b.restore.select import glob_regex, has_glob, normalize
from r2b.store.base import ObjectStore

DB_NAME = "catalog.duckdb"
LOCK_WAIT_S = 10.0
DEFAULT_FIND_LIMIT = 10_000
LOAD_BATCH = 10  # catalogs loaded per transaction when catching up with the store
_SCHEMA_VERSION = f"{CATALOG_VERSION}.3"  # .3: items

_TYPES = {
    "rows": "BIGINT",
    "size": "UBIGINT",
    "mode": "UINTEGER",
    "uid": "UINTEGER",
    "gid": "UINTEGER",
    "mtime": "BIGINT",
    "ctime": "BIGINT",
    "inode": "UBIGINT",
}
_RENAMED = {"mtime": "mtime_ns", "ctime": "ctime_ns"}
_PATH_COLUMNS = ("path", "parent", "name")
_ROW_COLUMNS = [c for c in DB_COLUMNS if c not in _PATH_COLUMNS]  # what ``files`` keeps
_FILES = [_RENAMED.get(c, c) for c in _ROW_COLUMNS]
_DDL = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE IF NOT EXISTS backups (
        backup VARCHAR PRIMARY KEY, machine VARCHAR, checkpoint VARCHAR, seq BIGINT,
        type VARCHAR, created VARCHAR, files BIGINT, partitions VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS paths (
        id BIGINT, machine VARCHAR, path VARCHAR, parent VARCHAR, name VARCHAR)""",
    "CREATE TABLE IF NOT EXISTS files (path_id BIGINT, "
    + ", ".join(
        f"{name} {_TYPES.get(src, 'VARCHAR')}"
        for name, src in zip(_FILES, _ROW_COLUMNS, strict=True)
    )
    + ")",
    "CREATE TABLE IF NOT EXISTS items ("
    + ", ".join(f"{_RENAMED.get(c, c)} {_TYPES.get(c, 'VARCHAR')}" for c in ITEM_DB_COLUMNS)
    + ")",
]
_ITEM_COLUMNS = [_RENAMED.get(c, c) for c in ITEM_DB_COLUMNS]
_TABLES = ("items", "files", "paths", "backups", "meta")


@dataclass(frozen=True)
class StoredCatalog:
    """A backup with a catalog in the store: its id and the catalog's key."""

    backup: str
    key: str


def stored_catalogs(store: ObjectStore) -> dict[str, StoredCatalog]:
    """Backups that have both a manifest and a ``catalog.parquet`` (one LIST of the store)."""
    manifests: set[str] = set()
    catalogs: dict[str, str] = {}
    for key in store.list(BACKUPS_PREFIX):
        backup, _, name = key[len(BACKUPS_PREFIX) :].partition("/")
        if name == "manifest.json":
            manifests.add(backup)
        elif name == "catalog.parquet":
            catalogs[backup] = key
    return {b: StoredCatalog(b, k) for b, k in catalogs.items() if b in manifests}


class CatalogDB:
    """One open connection to the catalog database (use ``open_catalog``)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, writable: bool) -> None:
        self.con = con
        self.path = path
        self.writable = writable

    # --- state -----------------------------------------------------------------------------

    def loaded(self) -> set[str]:
        return {str(r[0]) for r in self.con.execute("SELECT backup FROM backups").fetchall()}

    def meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def prepare(self, store_url: str) -> None:
        """Create the tables; forget everything if they were filled from another store or
        by another schema version."""
        if self._meta_or_none("store") == store_url and self._meta_or_none("schema") == (
            _SCHEMA_VERSION
        ):
            return
        for table in _TABLES:
            self.con.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in _DDL:
            self.con.execute(statement)
        self.con.execute(
            "INSERT INTO meta VALUES ('store', ?), ('schema', ?)", [store_url, _SCHEMA_VERSION]
        )

    def _meta_or_none(self, key: str) -> str | None:
        try:
            return self.meta(key)
        except duckdb.CatalogException:  # no tables yet
            return None

    def in_sync(self, store_url: str, wanted: set[str], stale_ok: bool) -> bool:
        """Whether reading can start now: same store, ``wanted`` loaded (and, unless
        ``stale_ok``, nothing loaded that is not wanted)."""
        try:
            if self.meta("store") != store_url or self.meta("schema") != _SCHEMA_VERSION:
                return False
            loaded = self.loaded()
        except duckdb.CatalogException:  # no tables yet
            return False
        return wanted <= loaded and (stale_ok or loaded <= wanted)

    # --- changes -----------------------------------------------------------------------------

    def load(self, manifest: Manifest, store: ObjectStore, key: str) -> int:
        """Load one backup's catalog from the store (replacing any earlier load of it)."""
        if manifest.id in self.loaded():
            self.remove(manifest.id)
        return self.load_many([(manifest, key)], store)

    def load_many(self, backups: Sequence[tuple[Manifest, str]], store: ObjectStore) -> int:
        """Load catalogs not loaded yet, in one transaction (a batch is much cheaper per row
        than one statement per backup). Returns the rows loaded."""
        import pyarrow as pa  # only when loading

        from catalog.parquet import read_catalog

        tables = []
        for _, key in backups:
            table = read_catalog(store.get(key), key, columns=DB_COLUMNS)
            for name in ("mtime", "ctime"):
                index = table.schema.get_field_index(name)
                table = table.set_column(index, name, table.column(name).cast(pa.int64()))
            tables.append(table)
        incoming = pa.concat_tables(tables)
        items = _incoming_items([manifest for manifest, _ in backups], store)
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.register("incoming", incoming)
            self._insert_paths()
            selected = ", ".join(f"i.{c}" for c in _ROW_COLUMNS)
            self.con.execute(
                f"INSERT INTO files SELECT p.id, {selected} FROM incoming i "
                "JOIN paths p ON p.machine = i.machine AND p.path = i.path"
            )
            self.con.unregister("incoming")
            if items is not None:
                self.con.register("incoming_items", items)
                self.con.execute(
                    f"INSERT INTO items ({', '.join(_ITEM_COLUMNS)}) "
                    f"SELECT {', '.join(ITEM_DB_COLUMNS)} FROM incoming_items"
                )
                self.con.unregister("incoming_items")
            self.con.executemany(
                "INSERT INTO backups VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [_backup_row(manifest) for manifest, _ in backups],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return len(incoming)

    def _insert_paths(self) -> None:
        """Give the (machine, path) pairs of ``incoming`` never seen before an id."""
        self.con.execute(
            "INSERT INTO paths "
            "SELECT (SELECT coalesce(max(id), 0) FROM paths) + row_number() OVER "
            "(ORDER BY n.machine, n.path), n.* FROM ("
            "SELECT DISTINCT i.machine, i.path, i.parent, i.name FROM incoming i "
            "WHERE NOT EXISTS (SELECT 1 FROM paths p WHERE p.machine = i.machine "
            "AND p.path = i.path)) n"
        )

    def remove(self, backup: str) -> None:
        self.con.execute("DELETE FROM items WHERE backup = ?", [backup])
        self.con.execute("DELETE FROM files WHERE backup = ?", [backup])
        self.con.execute("DELETE FROM backups WHERE backup = ?", [backup])

    def forget_unused_paths(self) -> None:
        self.con.execute("DELETE FROM paths WHERE id NOT IN (SELECT DISTINCT path_id FROM files)")

    def sync(
        self, store: ObjectStore, available: dict[str, StoredCatalog], only: set[str] | None = None
    ) -> int:
        """Load the stored catalogs not loaded yet (of ``only``, if given); drop the ones the
        store no longer has. Returns how many were loaded."""
        loaded = self.loaded()
        for gone in sorted(loaded - set(available)):
            self.remove(gone)
        if loaded - set(available):
            self.forget_unused_paths()
        todo = sorted(set(available) - loaded)
        if only is not None:
            todo = [b for b in todo if b in only]
        for start in range(0, len(todo), LOAD_BATCH):
            batch = []
            for backup in todo[start : start + LOAD_BATCH]:
                key = manifest_key(backup)  # type: ignore[arg-type]
                manifest = Manifest.from_json(store.get(key), key)
                batch.append((manifest, available[backup].key))
            self.load_many(batch, store)
        return len(todo)

    # --- questions ---------------------------------------------------------------------------

    def ls(self, backup: str, path: str) -> list[dict[str, Any]]:
        """The entries of directory ``path`` (or the entry itself when it is not one)."""
        path = normalize(path)
        select = (
            "SELECT p.path, f.type, f.size, f.mtime_ns, f.mode, f.fs, f.link, f.note "
            "FROM files f JOIN paths p ON f.path_id = p.id WHERE f.backup = ? AND p.machine = "
            "(SELECT machine FROM backups WHERE backup = ?)"
        )
        if path != "/":
            row = self.con.execute(f"{select} AND p.path = ?", [backup, backup, path]).fetchone()
            if row is None:
                raise PathNotInBackup(backup, path)
            if row[1] != "dir":
                return [_entry(row)]
        rows = self.con.execute(
            f"{select} AND p.parent = ? ORDER BY p.path", [backup, backup, path]
        ).fetchall()
        return [_entry(r) for r in rows]

    def find(
        self, pattern: str, machine: str | None = None, limit: int = DEFAULT_FIND_LIMIT
    ) -> list[dict[str, Any]]:
        """Entries whose path (a pattern with ``/``) or name (without) matches the glob, in
        every loaded backup: each file's versions together, oldest first; then the application
        items that match (module docstring). At most ``limit`` rows (0: all)."""
        if is_item_name(pattern):
            return self.find_items(pattern, machine, limit)
        files = self.find_files(pattern, machine, limit)
        if "/" in pattern or (limit > 0 and len(files) >= limit):
            return files
        return files + self.find_items(pattern, machine, limit - len(files) if limit else 0)

    def find_files(
        self, pattern: str, machine: str | None = None, limit: int = DEFAULT_FIND_LIMIT
    ) -> list[dict[str, Any]]:
        """Files matching ``pattern`` (see ``find``). The glob runs over distinct paths; only
        the first ``limit`` of them (in order) are joined to versions."""
        where, params = _match(pattern)
        if has_glob(pattern):  # a name like "photo [1].jpg" also matches itself
            column = "p.path" if "/" in pattern else "p.name"
            where = f"({where} OR {column} = ?)"
            params.append(normalize(pattern) if "/" in pattern else pattern)
        if machine is not None:
            where += " AND p.machine = ?"
            params.append(machine)
        cap = f" LIMIT {int(limit)}" if limit > 0 else ""
        sql = (
            f"WITH hits AS (SELECT id, machine, path FROM paths p WHERE {where} "
            f"ORDER BY path, machine{cap}) "
            "SELECT f.backup, h.machine, h.path, f.type, f.size, f.mtime_ns, b.created "
            "FROM hits h JOIN files f ON f.path_id = h.id JOIN backups b ON b.backup = f.backup "
            f"ORDER BY h.path, h.machine, b.seq{cap}"
        )
        rows = self.con.execute(sql, params).fetchall()
        return [
            {
                "backup": r[0],
                "machine": r[1],
                "path": r[2],
                "type": r[3],
                "size": r[4],
                "mtime": _iso(r[5]),
                "backup_created": r[6],
            }
            for r in rows
        ]

    def find_items(
        self, pattern: str, machine: str | None = None, limit: int = DEFAULT_FIND_LIMIT
    ) -> list[dict[str, Any]]:
        """Application items matching ``pattern`` (see ``find``): each item's copies in every
        backup together, oldest backup first."""
        where, params = _item_match(pattern)
        if machine is not None:
            where += " AND i.machine = ?"
            params.append(machine)
        cap = f" LIMIT {int(limit)}" if limit > 0 else ""
        rows = self.con.execute(
            "SELECT i.backup, i.machine, i.item, i.kind, i.size, i.mtime_ns, b.created, i.path, "
            "i.folder, i.subject, i.sender, i.recipients, i.rows, i.app, i.note FROM items i "
            f"JOIN backups b ON b.backup = i.backup WHERE {where} "
            f"ORDER BY i.item, i.machine, b.seq, i.path, i.folder{cap}",
            params,
        ).fetchall()
        return [_item_entry(r) for r in rows]


def _item_match(pattern: str) -> tuple[str, list[Any]]:
    """SQL condition for ``find_items``: the item name, or (no kind prefix) what a person
    remembers of an item: a Message-ID, a subject, a sender, a table name."""
    if is_item_name(pattern):
        name = normalize_item(pattern)
        if not has_item_glob(name):
            return "i.item = ?", [name]
        return "(regexp_full_match(i.item, ?) OR i.item = ?)", [item_glob_regex(name)[1:-1], name]
    regex = item_glob_regex(pattern.strip("<>") if not has_item_glob(pattern) else pattern)
    regex = regex[1:-1]
    return (
        "(regexp_full_match(i.message_id, ?) OR regexp_full_match(i.table_name, ?) "
        "OR regexp_full_match(i.subject, ?, 'i') OR regexp_full_match(i.sender, ?, 'i'))",
        [regex, regex, regex, regex],
    )


def _item_entry(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "backup": row[0],
        "machine": row[1],
        "item": row[2],
        "kind": row[3],
        "size": row[4],
        "mtime": _iso(row[5]),
        "backup_created": row[6],
        "stored_in": row[7],
        "folder": row[8],
        "subject": row[9],
        "from": row[10],
        "to": row[11],
        "rows": row[12],
        "app": row[13],
        "note": row[14],
    }


def _incoming_items(manifests: Sequence[Manifest], store: ObjectStore) -> Any:
    """The item rows of ``manifests`` that have some, as one Arrow table (None: none)."""
    import pyarrow as pa

    tables = []
    for manifest in manifests:
        key = ((manifest.catalog or {}).get("items") or {}).get("key")
        if key:
            table = read_items(store.get(str(key)), str(key), columns=ITEM_DB_COLUMNS)
            index = table.schema.get_field_index("mtime")
            tables.append(table.set_column(index, "mtime", table.column("mtime").cast(pa.int64())))
    return pa.concat_tables(tables) if tables else None


def _match(pattern: str) -> tuple[str, list[Any]]:
    """SQL condition and parameters for ``find``'s glob (semantics of ``r2b.restore.select``):
    a cheap ``=``/``LIKE`` first, the exact regular expression only where classes need it."""
    if "/" in pattern:
        pattern = normalize(pattern)
        if not has_glob(pattern):
            return "p.path = ?", [pattern]
        like = _like(pattern)
        condition, params = "regexp_full_match(p.path, ?)", [glob_regex(pattern)[1:-1]]
        if like is not None:
            condition = "p.path LIKE ? ESCAPE '\\' AND " + condition
            params.insert(0, like)
        return condition, params
    if not has_glob(pattern):
        return "p.name = ?", [pattern]
    like = _like(pattern)
    if like is not None and "[" not in pattern:
        return "p.name LIKE ? ESCAPE '\\'", [like]
    return "regexp_full_match(p.name, ?)", [glob_regex("/" + pattern)[2:-1]]


def _like(pattern: str) -> str | None:
    """A LIKE pattern at least as wide as the glob (None when it has classes)."""
    if "[" in pattern:
        return None
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    # "/**" may match no component at all: "/a/**" matches "/a" itself
    return escaped.replace("/**", "%").replace("**", "%").replace("*", "%").replace("?", "_")


def _backup_row(manifest: Manifest) -> list[Any]:
    catalog = manifest.catalog or {}
    return [
        manifest.id,
        manifest.machine,
        manifest.checkpoint,
        manifest.seq,
        manifest.type,
        manifest.created,
        int(catalog.get("files", 0)),
        _json(catalog.get("partitions", [])),
    ]


def _entry(row: Sequence[Any]) -> dict[str, Any]:
    doc = {
        "path": row[0],
        "type": row[1],
        "size": row[2],
        "mtime": _iso(row[3]),
        "mode": row[4],
        "fs": row[5],
    }
    if row[6] is not None:
        doc["link"] = row[6]
    if row[7] is not None:
        doc["note"] = row[7]
    return doc


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def _json(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True)


# --- opening ------------------------------------------------------------------------------------


@contextmanager
def open_catalog(home: Path, writable: bool) -> Iterator[CatalogDB]:
    """A connection to ``home/catalog.duckdb``, closed on exit; waits while another process
    holds a conflicting lock, then raises ``CatalogBusy``."""
    path = home / DB_NAME
    if writable:
        home.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            con = duckdb.connect(str(path), read_only=not writable)
            break
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise CatalogBusy(str(path), str(e).split(".")[0]) from None
            time.sleep(0.1)
    try:
        yield CatalogDB(con, path, writable)
    finally:
        con.close()


@contextmanager
def synced(
    home: Path,
    store: ObjectStore,
    wanted: set[str] | None = None,
) -> Iterator[CatalogDB]:
    """The catalog database with the store's catalogs loaded: ``wanted`` ones (``None``: all,
    and nothing the store no longer has). Read-only when it already is."""
    available = stored_catalogs(store)
    for backup in wanted or ():
        if backup not in available:
            raise NoCatalog(backup)
    need = set(available) if wanted is None else wanted
    if (home / DB_NAME).exists():
        with open_catalog(home, writable=False) as db:
            if db.in_sync(store.url, need, stale_ok=wanted is not None):
                yield db
                return
    with open_catalog(home, writable=True) as db:
        db.prepare(store.url)
        db.sync(store, available, only=wanted)
        yield db


def load_into_catalog(home: Path, store: ObjectStore, manifest: Manifest) -> bool:
    """After a backup: load its catalog. A busy database is left for ``synced`` to catch up
    later (False); the backup itself is complete either way."""
    if not manifest.catalog or not manifest.catalog.get("key"):
        return False
    try:
        with open_catalog(home, writable=True) as db:
            db.prepare(store.url)
            db.load(manifest, store, str(manifest.catalog["key"]))
    except CatalogBusy:
        return False
    return True
