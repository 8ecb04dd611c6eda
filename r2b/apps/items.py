"""Application items catalogued from the snapshot at build time (patent FIG. 4: GRT metadata).

The checkpoint mark names the file the app agent wrote (``app_metadata.file``: disk, partition,
path); ``extract_items`` finds that file in the file catalog just built, reads it **from the
replica snapshot** (``r2b.mount.filedata``: only the blocks holding it), and for each
application it lists makes item rows (``catalog.items``):

- ``maildir``: every file in a ``cur/`` or ``new/`` folder below the Maildir is a message; its
  first ``HEAD_BYTES`` are read (all the messages' heads in a few batched, coalesced fetches,
  in disk order) and its headers parsed (``r2b.apps.mailparse``); the few whose headers run
  longer are read again, further;
- ``mbox``: the mbox is read once, streamed in ``MBOX_CHUNK`` pieces, and split into messages
  (offset and length of each inside the file);
- ``sqlite``: one item per table of the metadata (exact row count and schema, captured under
  the writer lock), at the database file's catalog path;
- ``postgres``: one item per database and per table of the metadata, at the data directory's
  catalog path.

Whatever fails for one application is recorded in its status (``indexed: false`` and the
reason) and the others go on; a failure to read the metadata itself is an ``ItemsUnavailable``
for the caller to record. Store errors propagate (the build is worth retrying).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from catalog.schema import ROW_FIELDS, Row, join_path
from r2b.apps import mailparse
from r2b.errors import ItemsUnavailable, R2BError, StoreError
from r2b.mount.filedata import Request, StoredFile, batches

MBOX_CHUNK = 4 << 20
MAX_METADATA_BYTES = 256 << 20
METADATA_FORMAT = "r2b.app-metadata"
_P = {name: ROW_FIELDS.index(name) for name in ("disk", "path", "parent", "name", "type")}
_P |= {name: ROW_FIELDS.index(name) for name in ("size", "mtime", "storage", "extents")}
_INLINE = ROW_FIELDS.index("inline")

Reader = Callable[[Sequence[Request]], list[bytes]]
ItemRow = dict[str, Any]


def stored_file(row: Row) -> StoredFile:
    """A file's catalog row (``catalog.schema.ROW_FIELDS`` order) as a ``StoredFile``."""
    extents, inline, mtime = row[_P["extents"]], row[_INLINE], row[_P["mtime"]]
    return StoredFile(
        path=str(row[_P["path"]]),
        disk=str(row[_P["disk"]]),
        size=int(row[_P["size"]]),  # type: ignore[call-overload]
        storage=str(row[_P["storage"]]),
        extents=tuple(extents) if isinstance(extents, list) else (),
        inline=inline if isinstance(inline, bytes) else None,
        mtime_ns=mtime if isinstance(mtime, int) else None,
    )


class SnapshotFiles:
    """The files of a backup being built (its catalog rows) and a reader of their bytes."""

    def __init__(self, rows: Sequence[Row], read: Reader, multi_disk: bool) -> None:
        self.rows = rows
        self.read = read
        self.multi_disk = multi_disk
        self._by_path = {str(r[_P["path"]]): r for r in rows}

    def path_of(self, place: dict[str, Any]) -> str:
        """The catalog path of a place the app agent recorded: ``{disk, partition, path}``
        (partition: the Linux partition number, or None for a filesystem on the whole disk)."""
        root = f"/{place['disk']}" if self.multi_disk else "/"
        if place.get("partition"):
            root = join_path(root, f"p{int(place['partition'])}")
        inside = str(place["path"]).strip("/")
        return join_path(root, inside) if inside else root

    def kind(self, path: str) -> str | None:
        row = self._by_path.get(path)
        return None if row is None else str(row[_P["type"]])

    def file(self, path: str) -> StoredFile:
        """The regular file at catalog ``path``; ``ItemsUnavailable`` when there is none."""
        row = self._by_path.get(path)
        if row is None or row[_P["type"]] != "file":
            raise ItemsUnavailable(path, "not a file in the backup's file catalog")
        return stored_file(row)

    def read_all(self, stored: StoredFile, limit: int) -> bytes:
        if stored.size > limit:
            raise ItemsUnavailable(stored.path, f"larger than {limit} bytes")
        return self.read([(stored, 0, stored.size)])[0]

    def maildir_messages(self, root: str) -> list[tuple[str, StoredFile]]:
        """``(folder, file)`` of every message below Maildir ``root``, in path order."""
        prefix = root.rstrip("/") + "/"
        found = []
        for row in self.rows:
            parent = str(row[_P["parent"]])
            if row[_P["type"]] != "file" or not parent.startswith(prefix):
                continue
            folder_dir, _, sub = parent.rpartition("/")
            if sub in ("cur", "new"):
                found.append((folder_name(os.path.relpath(folder_dir or "/", root)), row))
        found.sort(key=lambda item: str(item[1][_P["path"]]))
        return [(folder, stored_file(row)) for folder, row in found]


def folder_name(relative: str) -> str:
    """A Maildir folder as IMAP servers name it: ``INBOX``, ``INBOX.Sent`` (Maildir++)."""
    if relative in (".", ""):
        return "INBOX"
    if relative.startswith(".") and "/" not in relative:
        return "INBOX" + relative
    return relative


@dataclass
class ExtractedItems:
    rows: list[ItemRow] = field(default_factory=list)
    apps: list[dict[str, Any]] = field(default_factory=list)


def extract_items(app_metadata: dict[str, Any], files: SnapshotFiles) -> ExtractedItems:
    """Item rows of every application the metadata file (named by the checkpoint mark's
    ``app_metadata``) lists, with a status per application (module docstring)."""
    doc = read_metadata(app_metadata, files)
    out = ExtractedItems()
    for app in doc.get("apps") or []:
        spec, kind = str(app.get("spec", "?")), str(app.get("kind", "?"))
        status: dict[str, Any] = {"spec": spec, "kind": kind}
        try:
            rows = _EXTRACTORS[kind](app, files, doc)
        except StoreError:
            raise
        except Exception as e:  # one application's trouble never stops the others
            status |= {"indexed": False, "items": 0, "reason": _reason(e)}
        else:
            status |= {"indexed": True, "items": len(rows)}
            out.rows += rows
        out.apps.append(status)
    return out


def read_metadata(app_metadata: dict[str, Any], files: SnapshotFiles) -> dict[str, Any]:
    """The metadata document the app agent wrote, read from the snapshot."""
    place = app_metadata.get("file")
    if not isinstance(place, dict):
        raise ItemsUnavailable("application metadata", "the checkpoint mark names no file")
    stored = files.file(files.path_of(place))
    try:
        doc = json.loads(files.read_all(stored, MAX_METADATA_BYTES))
    except (ValueError, UnicodeDecodeError) as e:
        raise ItemsUnavailable(stored.path, f"not readable JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != METADATA_FORMAT:
        raise ItemsUnavailable(stored.path, f"not an {METADATA_FORMAT} document")
    return doc


def _reason(error: Exception) -> str:
    if isinstance(error, R2BError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _target(app: dict[str, Any]) -> str:
    return str(app["spec"]).partition(":")[2]


def _home(app: dict[str, Any], files: SnapshotFiles) -> str:
    places = app.get("on_disk") or []
    if not places:
        raise ItemsUnavailable(str(app.get("spec")), "its files are not on a protected disk")
    return files.path_of(places[0])


# --- mail ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    """Where a message is: ``[offset, offset + length)`` of ``stored``, in ``folder``;
    ``where`` names it when it has no Message-ID."""

    stored: StoredFile
    folder: str
    offset: int
    length: int
    where: str


def _maildir(app: dict[str, Any], files: SnapshotFiles, doc: dict[str, Any]) -> list[ItemRow]:
    root = _home(app, files)
    if files.kind(root) != "dir":
        raise ItemsUnavailable(root, "the Maildir is not a folder in the backup's file catalog")
    messages = [
        _Message(stored, folder, 0, stored.size, stored.path)
        for folder, stored in files.maildir_messages(root)
    ]
    return list(_message_rows(app, files, messages, mailparse.HEAD_BYTES))


def _message_rows(
    app: dict[str, Any], files: SnapshotFiles, messages: Sequence[_Message], head: int
) -> Iterator[ItemRow]:
    """A row per message, from its first ``head`` bytes (read again, further, for the few
    whose headers run longer), batch by batch in disk order: memory holds one batch."""
    requests = [(m.stored, m.offset, min(head, m.length)) for m in messages]
    long_head = mailparse.LONG_HEAD_BYTES
    for batch in batches(requests):
        heads = files.read([requests[i] for i in batch])
        longer = [
            k
            for k, i in enumerate(batch)
            if head < long_head and not mailparse.head_complete(heads[k], messages[i].length)
        ]
        again = [messages[batch[k]] for k in longer]
        more = files.read([(m.stored, m.offset, min(long_head, m.length)) for m in again])
        for k, data in zip(longer, more, strict=True):
            heads[k] = data
        for k, i in enumerate(batch):
            yield _mail_row(app, messages[i], heads[k])


def _mbox(app: dict[str, Any], files: SnapshotFiles, doc: dict[str, Any]) -> list[ItemRow]:
    stored = files.file(_home(app, files))
    folder = stored.path.rsplit("/", 1)[-1]
    rows: list[ItemRow] = []
    longer: list[_Message] = []
    for found in _mbox_messages(files, stored):
        message = _Message(
            stored, folder, found.offset, found.length, f"{stored.path}:{found.offset}"
        )
        if mailparse.head_complete(found.head, found.length):
            rows.append(_mail_row(app, message, found.head))
        else:
            longer.append(message)
    rows += _message_rows(app, files, longer, mailparse.LONG_HEAD_BYTES)
    return rows


def _mbox_messages(files: SnapshotFiles, stored: StoredFile) -> Iterator[mailparse.MboxMessage]:
    """The messages of an mbox, read once in ``MBOX_CHUNK`` pieces."""
    scanner = mailparse.MboxScanner(mailparse.HEAD_BYTES)
    for offset in range(0, stored.size, MBOX_CHUNK):
        scanner.feed(files.read([(stored, offset, MBOX_CHUNK)])[0])
        yield from scanner.messages()
    scanner.close()
    yield from scanner.messages()


def _mail_row(app: dict[str, Any], message: _Message, head: bytes) -> ItemRow:
    headers = mailparse.parse_headers(head)
    date = headers.date_ns
    return {
        "item": f"mail:{headers.message_id or message.where}",
        "kind": "mail",
        "app": app["spec"],
        "path": message.stored.path,
        "offset": message.offset,
        "length": message.length,
        "folder": message.folder,
        "message_id": headers.message_id,
        "sender": headers.sender,
        "recipients": headers.recipients,
        "subject": headers.subject,
        "mtime": date if date is not None else message.stored.mtime_ns,
        "size": message.length,
        "note": "; ".join(headers.notes) or None,
    }


# --- databases ----------------------------------------------------------------------------------


def _sqlite(app: dict[str, Any], files: SnapshotFiles, doc: dict[str, Any]) -> list[ItemRow]:
    stored = files.file(_home(app, files))
    target = _target(app)
    return [
        {
            "item": f"sqlite:{target}:{table['name']}",
            "kind": "sqlite-table",
            "app": app["spec"],
            "path": stored.path,
            "mtime": stored.mtime_ns,
            "database": target,
            "table_name": table["name"],
            "rows": int(table["rows"]),
            "sql": table.get("schema"),
        }
        for table in app.get("tables") or []
    ]


def _postgres(app: dict[str, Any], files: SnapshotFiles, doc: dict[str, Any]) -> list[ItemRow]:
    datadir = _home(app, files)
    if files.kind(datadir) != "dir":
        raise ItemsUnavailable(datadir, "the data directory is not in the backup's file catalog")
    captured = _time_ns(doc.get("time"))
    common = {"app": app["spec"], "path": datadir, "mtime": captured}
    rows: list[ItemRow] = []
    for database in app.get("databases") or []:
        name = str(database["name"])
        tables = database.get("tables") or []
        size = sum(int(t.get("bytes") or 0) for t in tables)
        rows.append(
            {**common, "item": f"postgres:{name}", "kind": "postgres-database", "size": size,
             "database": name}
        )  # fmt: skip
        rows += [
            {**common, "item": f"postgres:{name}.{t['schema']}.{t['name']}",
             "kind": "postgres-table", "size": int(t.get("bytes") or 0), "database": name,
             "schema_name": t["schema"], "table_name": t["name"],
             "rows": int(t.get("rows_estimate") or 0), "note": "rows: the server's estimate"}
            for t in tables
        ]  # fmt: skip
    return rows


def _time_ns(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1_000_000) * 1000
    except ValueError:
        return None


_EXTRACTORS: dict[str, Callable[[dict[str, Any], SnapshotFiles, dict[str, Any]], list[ItemRow]]] = {
    "maildir": _maildir,
    "mbox": _mbox,
    "sqlite": _sqlite,
    "postgres": _postgres,
}
