"""Granular restore: files and folders of a backup, reading only the chunks that hold them.

``restore_files`` reads the backup's catalog (its Parquet in the store, the source of truth),
selects rows (``r2b.restore.select``: paths, folders, globs), maps each file's disk extents to
image blocks (``r2b.extents.extent_pieces``) and fetches **only those blocks**, verified, with
``r2b.blockio.fetch_blocks``; ``bytes_fetched`` is what those ranged GETs read from the chunk
packs. Resident (inline) bytes come from the catalog itself; files whose data needs the
filesystem driver (``storage == "fs"``: NTFS compressed) are read through The Sleuth Kit from
the image, which also fetches only the blocks it touches.

Where things land: a backup path ``/p2/etc/hosts`` is written to ``DIR/p2/etc/hosts`` (the
whole path is kept, as restic does, so two selected files never collide). Then:

- files are written sparse: holes and all-zero stretches are not written; each appears under
  its name only when all of them are complete (written to ``.<name>.r2b-partial-*`` first);
- mode (permission bits) and mtime are kept, for directories too (set last, deepest first);
  ownership is not restored (the restored tree belongs to whoever restores);
- symlinks are restored as symlinks, after everything else, with a target kept inside the
  restored filesystem (``contained_target``);
- names never escape DIR: unsafe catalog paths are skipped and reported, and every file is
  created through directory descriptors opened with ``O_NOFOLLOW`` below DIR, so neither a
  restored symlink nor one already in DIR is followed;
- nothing existing is overwritten unless ``overwrite``: every conflict is found before the
  first byte is written (``RestoreConflict``); with ``overwrite`` files and symlinks are
  replaced, never a directory.
- fifos, sockets and devices are skipped and reported.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from catalog.parquet import read_catalog
from r2b.blockio import Block, Layout, fetch_blocks
from r2b.errors import (
    BadInput,
    ChunkCorrupt,
    CorruptData,
    LocalWriteError,
    NoCatalog,
    PathNotInBackup,
    RestoreConflict,
)
from r2b.extents import Piece, extent_pieces, extents_within
from r2b.ids import DiskId
from r2b.image.chunks import ChunkIndex
from r2b.image.format import Manifest
from r2b.image.restore import image_layout
from r2b.mount.image import ImageFile
from r2b.mount.partitions import TskImage, read_partitions
from r2b.mount.walker import open_filesystem
from r2b.restore.select import contained_target, safe_parts, select
from r2b.store.base import ObjectStore
from r2b.store.wrappers import CountingStore

BATCH_FILES = 256  # files open at once while their blocks are fetched
READ_CHUNK = 1 << 20
_RESTORABLE = ("file", "dir", "symlink")
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class FileRestoreResult:
    to: Path
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_written: int = 0  # the restored files' sizes
    bytes_fetched: int = 0  # read from chunk packs
    chunks_fetched: int = 0
    requests: int = 0  # ranged GETs of chunk packs
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Entry:
    path: str
    parts: tuple[str, ...]
    type: str
    size: int
    mode: int
    mtime_ns: int | None
    storage: str
    extents: list[tuple[int, int, int]]
    inline: bytes | None
    link: str | None
    disk: DiskId
    partition: str
    inode: int


def restore_files(
    store: ObjectStore,
    manifest: Manifest,
    patterns: Sequence[str],
    to: Path,
    overwrite: bool = False,
    chunks: ChunkIndex | None = None,
) -> FileRestoreResult:
    """Restore what ``patterns`` select from ``manifest``'s backup into folder ``to``."""
    if not patterns:
        raise BadInput("name at least one path to restore (or / for everything)")
    result = FileRestoreResult(to)
    entries = _plan(store, manifest, patterns, result)
    if to.exists() and not to.is_dir():
        raise BadInput(f"{to} exists and is not a folder")
    try:
        to.mkdir(parents=True, exist_ok=True)
        with _Tree(to) as tree:
            conflicts = [e.path for e in entries if tree.conflicts(e.parts, e.type, overwrite)]
            if conflicts:
                raise RestoreConflict(conflicts)
            _Restorer(store, manifest, tree, result, chunks).run(entries)
    except OSError as e:
        raise LocalWriteError(e.filename or str(to), e.strerror or str(e)) from e
    return result


# --- planning -------------------------------------------------------------------------------


def _plan(
    store: ObjectStore, manifest: Manifest, patterns: Sequence[str], result: FileRestoreResult
) -> list[_Entry]:
    """The entries to restore, in path order; unsafe and unrestorable ones go to ``skipped``."""
    if not manifest.catalog or not manifest.catalog.get("key"):
        raise NoCatalog(manifest.id)
    key = str(manifest.catalog["key"])
    table = read_catalog(store.get(key), key)
    paths = table.column("path").to_pylist()
    is_dir = np.asarray(table.column("type").to_numpy(zero_copy_only=False) == "dir")
    chosen, missing = select(paths, is_dir, patterns)
    if missing:
        raise PathNotInBackup(manifest.id, missing[0])
    depth = _fs_depths(manifest)
    entries: list[_Entry] = []
    seen: set[str] = set()
    for row in _rows(table.filter(pa.array(chosen))):
        entry = _entry(row, result)
        if entry is not None and entry.path not in seen:
            seen.add(entry.path)
            if entry.type == "symlink":
                fs_depth = depth.get((entry.disk, entry.partition), 0)
                entry.link = contained_target(entry.parts, fs_depth, entry.link or "")
                if entry.link is None:
                    result.skipped.append({"path": entry.path, "reason": "unusable link target"})
                    continue
            entries.append(entry)
    return entries


def _fs_depths(manifest: Manifest) -> dict[tuple[str, str], int]:
    """How many leading path components name the disk and partition of each filesystem."""
    parts = (manifest.catalog or {}).get("partitions", [])
    return {
        (str(p["disk"]), str(p["partition"])): len([c for c in str(p["path"]).split("/") if c])
        for p in parts
    }


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    columns = ["path", "type", "size", "mode", "storage", "extents", "inline", "link"]
    columns += ["disk", "partition", "inode"]
    data = {name: table.column(name).to_pylist() for name in columns}
    data["mtime"] = table.column("mtime").cast(pa.int64()).to_pylist()
    for i in range(len(table)):
        yield {name: values[i] for name, values in data.items()}


def _entry(row: dict[str, Any], result: FileRestoreResult) -> _Entry | None:
    path = str(row["path"])
    parts = safe_parts(path)
    if parts is None:
        result.skipped.append({"path": path, "reason": "unsafe name"})
        return None
    if row["type"] not in _RESTORABLE:
        result.skipped.append({"path": path, "reason": f"{row['type']} is not restored"})
        return None
    extents = [(e["file_offset"], e["disk_offset"], e["length"]) for e in row["extents"] or ()]
    return _Entry(
        path,
        parts,
        str(row["type"]),
        int(row["size"]),
        int(row["mode"]),
        row["mtime"],
        str(row["storage"]),
        extents,
        row["inline"],
        row["link"],
        DiskId(str(row["disk"])),
        str(row["partition"]),
        int(row["inode"]),
    )


# --- the target tree, without following links ------------------------------------------------


class _Tree:
    """Directory descriptors below the restore root, every component opened ``O_NOFOLLOW``
    (an LRU of open ones). A symlink or file where a directory is due is a conflict."""

    def __init__(self, root: Path, capacity: int = 64) -> None:
        self.root = root
        # DIR itself is the user's choice (it may be a symlink); everything below it is not.
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fds: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._capacity = capacity
        self._kinds: dict[tuple[str, ...], int | None] = {}

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self.root_fd)

    def kind(self, parts: tuple[str, ...]) -> int | None:
        """``st_mode`` of what is at ``parts`` now (not following links), None if nothing."""
        if parts in self._kinds:
            return self._kinds[parts]
        mode: int | None = None
        above = self.kind(parts[:-1]) if len(parts) > 1 else stat.S_IFDIR
        if above is not None and stat.S_ISDIR(above):
            try:
                mode = os.lstat(parts[-1], dir_fd=self.dir_fd(parts[:-1], create=False)).st_mode
            except (FileNotFoundError, NotADirectoryError):
                mode = None
        self._kinds[parts] = mode
        return mode

    def conflicts(self, parts: tuple[str, ...], kind: str, overwrite: bool) -> bool:
        for depth in range(1, len(parts)):
            above = self.kind(parts[:depth])
            if above is not None and not stat.S_ISDIR(above):
                return True
        here = self.kind(parts)
        if here is None:
            return False
        if kind == "dir" or stat.S_ISDIR(here):
            return not (kind == "dir" and stat.S_ISDIR(here))
        return not overwrite

    def dir_fd(self, parts: tuple[str, ...], create: bool = True) -> int:
        """A descriptor of directory ``parts`` (created with 0755 when missing)."""
        if not parts:
            return self.root_fd
        fd = self._fds.get(parts)
        if fd is not None:
            self._fds.move_to_end(parts)
            return fd
        parent = self.dir_fd(parts[:-1], create)
        try:
            fd = os.open(parts[-1], _NOFOLLOW_DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
            fd = os.open(parts[-1], _NOFOLLOW_DIR, dir_fd=parent)
        except (NotADirectoryError, OSError) as e:
            raise RestoreConflict(["/" + "/".join(parts)]) from e
        self._fds[parts] = fd
        while len(self._fds) > self._capacity:
            os.close(self._fds.popitem(last=False)[1])
        return fd


# --- writing ----------------------------------------------------------------------------------


@dataclass
class _Open:
    entry: _Entry
    fd: int
    temp: str


class _Restorer:
    def __init__(
        self,
        store: ObjectStore,
        manifest: Manifest,
        tree: _Tree,
        result: FileRestoreResult,
        chunks: ChunkIndex | None,
    ) -> None:
        self.counting = CountingStore(store)
        self.manifest = manifest
        self.tree = tree
        self.result = result
        self._chunks = chunks
        self._layouts: dict[DiskId, Layout] = {}
        self._lost: dict[DiskId, set[str]] = {}  # chunks the image needs that the store lacks
        self._filesystems: dict[tuple[str, str], tuple[TskImage, Any]] = {}
        self._done: list[_Open] = []

    def run(self, entries: list[_Entry]) -> None:
        for entry in entries:
            if entry.type == "dir":
                self.tree.dir_fd(entry.parts)
        files = [e for e in entries if e.type == "file"]
        try:
            for batch in _batches(files):
                self._write_batch(batch)
            for done in self._done:
                self._commit(done)
        except BaseException:
            for done in self._done:
                self._discard(done)
            raise
        for entry in entries:
            if entry.type == "symlink":
                self._symlink(entry)
        for entry in reversed([e for e in entries if e.type == "dir"]):
            self._dir_metadata(entry)
        self.result.bytes_fetched = self.counting.bytes_got
        self.result.requests = self.counting.gets

    # files

    def _write_batch(self, batch: list[_Entry]) -> None:
        opened: list[_Open] = []
        try:
            for entry in batch:
                opened.append(self._create(entry))
            self._fill(opened)
            for item in opened:
                _finish_file(item)
        except BaseException:
            for item in opened:
                self._discard(item)
            raise
        self._done += opened

    def _create(self, entry: _Entry) -> _Open:
        parent = self.tree.dir_fd(entry.parts[:-1])
        temp = f".{entry.parts[-1][:200]}.r2b-partial-{uuid.uuid4().hex[:8]}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600, dir_fd=parent)
        os.ftruncate(fd, entry.size)
        return _Open(entry, fd, temp)

    def _fill(self, opened: list[_Open]) -> None:
        by_disk: dict[DiskId, list[_Open]] = {}
        for item in opened:
            entry = item.entry
            if entry.storage == "inline" and entry.inline is not None:
                _write(item.fd, entry.inline[: entry.size], 0)
            elif entry.storage == "extents":
                by_disk.setdefault(entry.disk, []).append(item)
            elif entry.storage == "fs":
                self._read_via_fs(item)
        for disk, items in by_disk.items():
            self._fetch_extents(disk, items)

    def _fetch_extents(self, disk: DiskId, items: list[_Open]) -> None:
        layout = self._layout(disk)
        wanted: dict[int, list[tuple[int, Piece]]] = {}
        for index, item in enumerate(items):
            entry = item.entry
            if not extents_within(entry.extents, entry.size, layout.size):
                raise CorruptData(f"catalog of {self.manifest.id}: {entry.path} lies off the disk")
            for piece in extent_pieces(entry.extents, layout.block_size):
                wanted.setdefault(piece[0], []).append((index, piece))
        blocks = np.array(sorted(wanted), dtype=np.int64)
        self._check_not_lost(disk, layout, blocks)

        def deliver(block: Block) -> None:
            for index, (_, inside, at, count) in wanted[block.number]:
                _write(items[index].fd, block.plain[inside : inside + count], at)

        damage = fetch_blocks(self.counting, layout, blocks, deliver)
        self.result.chunks_fetched += int((layout.codec[blocks] != 0).sum()) if len(blocks) else 0
        if damage:
            bad = sorted({layout.digests[b].tobytes().hex() for b in damage.blocks})
            reason = next(iter(damage.by_key.values()))[0]
            raise ChunkCorrupt(bad, [self.manifest.id], reason)

    def _layout(self, disk: DiskId) -> Layout:
        if disk not in self._layouts:
            if disk not in self.manifest.disks:
                raise CorruptData(f"catalog of {self.manifest.id} names unknown disk {disk}")
            self._chunks = self._chunks or ChunkIndex.load(self.counting.inner)
            layout, lost = image_layout(self.counting.inner, self.manifest, disk, self._chunks)
            self._layouts[disk], self._lost[disk] = layout, set(lost)
        return self._layouts[disk]

    def _check_not_lost(self, disk: DiskId, layout: Layout, blocks: npt.NDArray[np.int64]) -> None:
        """A needed chunk the store has lost would read as zeros: name it instead."""
        lost = self._lost.get(disk)
        if lost:
            needed = {layout.digests[b].tobytes().hex() for b in blocks.tolist()}
            if needed & lost:
                bad = sorted(needed & lost)
                raise ChunkCorrupt(bad, [self.manifest.id], "is missing from the chunk index")

    def _read_via_fs(self, item: _Open) -> None:
        """Read a file through The Sleuth Kit from the image (its data needs the driver)."""
        entry = item.entry
        tsk, fs = self._filesystem(entry.disk, entry.partition)
        handle = _tsk_call(tsk, entry.path, lambda: fs.open_meta(inode=entry.inode))
        for offset in range(0, entry.size, READ_CHUNK):
            length = min(READ_CHUNK, entry.size - offset)
            data = _tsk_call(tsk, entry.path, partial(handle.read_random, offset, length))
            _write(item.fd, bytes(data), offset)

    def _filesystem(self, disk: DiskId, partition: str) -> tuple[TskImage, Any]:
        key = (str(disk), partition)
        if key not in self._filesystems:
            layout = self._layout(disk)
            if self._lost.get(disk):
                lost = sorted(self._lost[disk])
                raise ChunkCorrupt(lost, [self.manifest.id], "is missing from the chunk index")
            tsk = TskImage(ImageFile(self.counting, layout, f"{self.manifest.id}/{disk}"))
            volumes = [v for v in read_partitions(tsk).volumes if v.name == partition]
            if not volumes:
                raise CorruptData(f"{self.manifest.id}/{disk} has no partition {partition!r}")
            self._filesystems[key] = (tsk, open_filesystem(tsk, volumes[0]))
        return self._filesystems[key]

    def _commit(self, item: _Open) -> None:
        parent = self.tree.dir_fd(item.entry.parts[:-1])
        os.rename(item.temp, item.entry.parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
        self.result.files += 1
        self.result.bytes_written += item.entry.size

    def _discard(self, item: _Open) -> None:
        if item.fd >= 0:
            os.close(item.fd)
            item.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(item.temp, dir_fd=self.tree.dir_fd(item.entry.parts[:-1]))

    # links and directories

    def _symlink(self, entry: _Entry) -> None:
        parent = self.tree.dir_fd(entry.parts[:-1])
        name = entry.parts[-1]
        with contextlib.suppress(FileNotFoundError):  # there only with overwrite
            os.unlink(name, dir_fd=parent)
        os.symlink(entry.link or ".", name, dir_fd=parent)
        if entry.mtime_ns is not None:
            times = (entry.mtime_ns, entry.mtime_ns)
            os.utime(name, ns=times, dir_fd=parent, follow_symlinks=False)
        self.result.symlinks += 1

    def _dir_metadata(self, entry: _Entry) -> None:
        fd = self.tree.dir_fd(entry.parts)
        os.fchmod(fd, entry.mode & 0o7777)
        if entry.mtime_ns is not None:
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        self.result.dirs += 1


def _tsk_call(tsk: TskImage, path: str, call: Callable[[], Any]) -> Any:
    """``call()``, with TSK's failures named: the store's error, or ``CorruptData``."""
    try:
        return call()
    except (OSError, RuntimeError) as e:
        if tsk.error is not None:
            raise tsk.error from None
        raise CorruptData(f"{path} could not be read through its filesystem: {e}") from None


def _finish_file(item: _Open) -> None:
    """Mode and mtime on the written file, then close it (the rename comes later)."""
    entry = item.entry
    os.fchmod(item.fd, entry.mode & 0o7777)
    if entry.mtime_ns is not None:
        os.utime(item.fd, ns=(entry.mtime_ns, entry.mtime_ns))
    os.close(item.fd)
    item.fd = -1


def _write(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset``, leaving all-zero stretches as holes."""
    if not data or data.count(0) == len(data):
        return
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _batches(files: list[_Entry]) -> Iterator[list[_Entry]]:
    """Files in groups of ``BATCH_FILES``, in disk order so neighbours share blocks."""
    ordered = sorted(files, key=lambda e: e.extents[0][1] if e.extents else -1)
    for start in range(0, len(ordered), BATCH_FILES):
        yield ordered[start : start + BATCH_FILES]
