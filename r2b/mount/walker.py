"""Walking one filesystem of a stored disk into catalog rows (``catalog.schema``).

``walk_filesystem`` opens the filesystem of a volume with The Sleuth Kit (ext2/3/4, FAT12/16/
32, exFAT, NTFS, HFS+, ISO 9660, UFS, ... whatever TSK detects) and records every allocated
file, directory, symlink and special file, depth first, each directory once (a crafted loop
cannot trap it). Left out: deleted entries, TSK's virtual entries (``$OrphanFiles``, FAT's
``$MBR``/``$FAT1``...), NTFS's metadata files at the root (``$MFT`` ... ``$Extend``), FAT's
volume label entry, and alternate data streams.

A regular file's bytes are located from its data attribute:

- non-resident runs become disk extents ``(file_offset, disk_offset, length)``: the run's
  filesystem block times the block size plus the volume's offset, clipped to the file size;
  sparse runs (also ext4's unwritten extents, which TSK reports as sparse) are holes;
- resident data (ext4 inline data, NTFS resident ``$DATA``) is read and kept in the row:
  a few hundred bytes at most, so storing them is simpler and cheaper than pointing into an
  inode or MFT record;
- compressed or encrypted data (NTFS) cannot be copied from the disk as is: ``storage`` is
  ``fs`` and restore reads it through TSK.

NTFS symlinks and junctions are reparse points; their target is parsed from the reparse data
(``\\??\\C:\\dir`` becomes ``/dir``, backslashes become slashes). FAT names that exist only
as 8.3 short names with non-ASCII characters are decoded from the directory entry (TSK shows
``^`` for those characters; ``FatShortNames``); long names are exact.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytsk3

from catalog.schema import Extent, RowBuffer
from r2b.errors import UnreadableFilesystem
from r2b.mount.partitions import TskImage, Volume

MAX_DEPTH = 4096
MAX_INLINE = 64 << 10  # resident data is at most one MFT record; more means a corrupt entry

_FS_NAMES = {
    pytsk3.TSK_FS_TYPE_EXT2: "ext2",
    pytsk3.TSK_FS_TYPE_EXT3: "ext3",
    pytsk3.TSK_FS_TYPE_EXT4: "ext4",
    pytsk3.TSK_FS_TYPE_FAT12: "fat12",
    pytsk3.TSK_FS_TYPE_FAT16: "fat16",
    pytsk3.TSK_FS_TYPE_FAT32: "fat32",
    pytsk3.TSK_FS_TYPE_EXFAT: "exfat",
    pytsk3.TSK_FS_TYPE_NTFS: "ntfs",
    pytsk3.TSK_FS_TYPE_FFS1: "ufs1",
    pytsk3.TSK_FS_TYPE_FFS1B: "ufs1",
    pytsk3.TSK_FS_TYPE_FFS2: "ufs2",
    pytsk3.TSK_FS_TYPE_HFS: "hfs",
    pytsk3.TSK_FS_TYPE_ISO9660: "iso9660",
    pytsk3.TSK_FS_TYPE_SWAP: "swap",
    pytsk3.TSK_FS_TYPE_YAFFS2: "yaffs2",
}
_TYPES = {
    pytsk3.TSK_FS_META_TYPE_REG: "file",
    pytsk3.TSK_FS_META_TYPE_DIR: "dir",
    pytsk3.TSK_FS_META_TYPE_LNK: "symlink",
    pytsk3.TSK_FS_META_TYPE_FIFO: "fifo",
    pytsk3.TSK_FS_META_TYPE_SOCK: "socket",
    pytsk3.TSK_FS_META_TYPE_CHR: "chardev",
    pytsk3.TSK_FS_META_TYPE_BLK: "blockdev",
}
_VIRTUAL = {int(pytsk3.TSK_FS_META_TYPE_VIRT), int(pytsk3.TSK_FS_META_TYPE_VIRT_DIR)}
_DIR = int(pytsk3.TSK_FS_META_TYPE_DIR)
_REG = int(pytsk3.TSK_FS_META_TYPE_REG)
_LNK = int(pytsk3.TSK_FS_META_TYPE_LNK)
_NAME_ALLOC = int(pytsk3.TSK_FS_NAME_FLAG_ALLOC)
_ATTR_NONRES = int(pytsk3.TSK_FS_ATTR_NONRES)
_ATTR_RES = int(pytsk3.TSK_FS_ATTR_RES)
_ATTR_COMP = int(pytsk3.TSK_FS_ATTR_COMP)
_ATTR_ENC = int(pytsk3.TSK_FS_ATTR_ENC)
_RUN_HOLE = int(pytsk3.TSK_FS_ATTR_RUN_FLAG_SPARSE) | int(pytsk3.TSK_FS_ATTR_RUN_FLAG_FILLER)
_RUN_ENC = int(pytsk3.TSK_FS_ATTR_RUN_FLAG_ENCRYPTED)
_DATA_TYPES = {int(pytsk3.TSK_FS_ATTR_TYPE_DEFAULT), int(pytsk3.TSK_FS_ATTR_TYPE_NTFS_DATA)}
_NTFS_REPARSE = 0xC0
_NTFS_LAST_SYSTEM_FILE = 11  # $MFT (0) ... $Extend (11); 12-15 are reserved
_EXFAT_SYSTEM = {b"$ALLOC_BITMAP", b"$UPCASE_TABLE", b"$VOLUME_GUID_ENTRY", b"$TEXFAT"}
_REPARSE_SYMLINK = 0xA000000C
_REPARSE_MOUNT_POINT = 0xA0000003
_REPARSE_LX_SYMLINK = 0xA000001D


@dataclass(frozen=True)
class WalkedFilesystem:
    fs: str
    entries: int
    root_mode: int
    root_mtime: int | None
    unreadable_dirs: list[str]  # directories TSK could not list (their entries are missing)


@dataclass(frozen=True)
class _Place:
    """Where the walk is: which disk, volume and filesystem, and how blocks map to bytes."""

    disk: str
    partition: str
    fs: str
    volume_offset: int
    block_size: int
    ntfs: bool
    short_names: FatShortNames | None = None


class FatShortNames:
    """The real characters of FAT 8.3 names that TSK shows with ``^`` (it does not decode the
    OEM code page). A FAT inode number is a directory entry's position (TSK: entry ``n`` of
    the area after the FATs is inode ``n + 3``), so the raw entry is read from the image and
    decoded in ``CODEPAGE`` with the entry's lower-case flags — used only when it matches
    what TSK reported in every ASCII position. The code page is an assumption (the volume
    does not record it): cp850, the Western European default of Windows and of mtools."""

    CODEPAGE = "cp850"
    FIRST_INODE = 3

    def __init__(self, image: TskImage, volume_offset: int) -> None:
        self.image = image
        boot = image.image.pread(volume_offset, 512)
        self.sector = int.from_bytes(boot[11:13], "little") or 512
        fat_sectors = int.from_bytes(boot[22:24], "little") or int.from_bytes(boot[36:40], "little")
        first = int.from_bytes(boot[14:16], "little") + boot[16] * fat_sectors
        self.area = volume_offset + first * self.sector

    def name(self, inode: int, shown: bytes) -> bytes | None:
        index = inode - self.FIRST_INODE
        if index < 0:
            return None
        per_sector = self.sector // 32
        at = self.area + (index // per_sector) * self.sector + (index % per_sector) * 32
        entry = self.image.image.pread(at, 32)
        if len(entry) < 32 or entry[11] & 0x0F == 0x0F or entry[0] in (0x00, 0xE5):
            return None
        raw = bytes([0xE5]) + entry[1:11] if entry[0] == 0x05 else entry[:11]
        base = raw[:8].rstrip(b" ").decode(self.CODEPAGE)
        ext = raw[8:].rstrip(b" ").decode(self.CODEPAGE)
        base = base.lower() if entry[12] & 0x08 else base
        ext = ext.lower() if entry[12] & 0x10 else ext
        text = f"{base}.{ext}" if ext else base
        masked = "".join(c if c.isascii() else "^" for c in text).encode()
        return text.encode() if masked.lower() == shown.lower() else None


def display_name(raw: bytes) -> str:
    """A directory entry's name as one path component (see ``catalog.schema``)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "backslashreplace")
    return text.replace("/", "\\x2f") if "/" in text else text


def open_filesystem(image: TskImage, volume: Volume) -> Any:
    """TSK's ``FS_Info`` for ``volume``; ``UnreadableFilesystem`` when TSK cannot read it."""
    label = volume.name or "disk"
    try:
        return pytsk3.FS_Info(image, offset=volume.offset)
    except (OSError, RuntimeError) as e:
        if image.error is not None:
            raise image.error from None
        raise UnreadableFilesystem(label, _tsk_reason(e)) from None


def fs_name(fs: Any) -> str:
    ftype = int(fs.info.ftype)
    return _FS_NAMES.get(ftype, f"tsk-{ftype:#x}")


def walk_filesystem(
    image: TskImage, volume: Volume, disk: str, root: str, rows: RowBuffer
) -> WalkedFilesystem:
    """Add a row for every entry of ``volume``'s filesystem under catalog path ``root``."""
    fs = open_filesystem(image, volume)
    name = fs_name(fs)
    short_names = FatShortNames(image, volume.offset) if name.startswith("fat") else None
    block_size = int(fs.info.block_size)
    place = _Place(disk, volume.name, name, volume.offset, block_size, name == "ntfs", short_names)
    unreadable: list[str] = []
    try:
        root_meta = fs.open_meta(inode=fs.info.root_inum).info.meta
        entries = _walk(image, fs, int(fs.info.root_inum), root, place, rows, unreadable)
    except (OSError, RuntimeError) as e:
        if image.error is not None:
            raise image.error from None
        raise UnreadableFilesystem(volume.name or "disk", _tsk_reason(e)) from None
    if image.error is not None:  # TSK skipped over a failed read: the walk is not complete
        raise image.error
    mode, mtime = int(root_meta.mode), _ns(root_meta, "mtime")
    return WalkedFilesystem(name, entries, mode, mtime, unreadable)


def _walk(
    image: TskImage,
    fs: Any,
    root_inum: int,
    root: str,
    place: _Place,
    rows: RowBuffer,
    unreadable: list[str],
) -> int:
    """Depth first from ``root_inum``; a directory TSK cannot list is noted and skipped.
    (The hot loop of indexing: rows are appended as tuples, see ``catalog.schema``.)"""
    append = rows.rows.append
    visited = {root_inum}
    stack = [(root_inum, root, 0)]
    entries = 0
    while stack:
        inum, path, depth = stack.pop()
        try:
            children = list(_children(fs, inum, place, depth == 0))
        except (OSError, RuntimeError):
            if image.error is not None:
                raise image.error from None
            unreadable.append(path)
            continue
        prefix = path if path.endswith("/") else path + "/"
        for entry, meta, mtype, name in children:
            child = prefix + name
            append(_row(entry, meta, mtype, child, path, name, place))
            entries += 1
            if mtype == _DIR and depth < MAX_DEPTH:
                addr = int(meta.addr)
                if addr not in visited:
                    visited.add(addr)
                    stack.append((addr, child, depth + 1))
    return entries


def _children(
    fs: Any, inum: int, place: _Place, at_root: bool
) -> Iterator[tuple[Any, Any, int, str]]:
    """The allocated, real entries of directory ``inum``: (file, meta, type, name)."""
    for entry in fs.open_dir(inode=inum):
        info = entry.info
        name = info.name
        raw = name.name
        if raw in (b".", b"..") or not raw or not int(name.flags) & _NAME_ALLOC:
            continue
        meta = info.meta
        if meta is None:
            continue
        mtype = int(meta.type)
        if mtype in _VIRTUAL or (at_root and _system_entry(place, raw, int(meta.addr))):
            continue
        if place.short_names is not None and b"^" in raw:
            raw = place.short_names.name(int(meta.addr), raw) or raw
        yield entry, meta, mtype, display_name(raw)


def _system_entry(place: _Place, raw: bytes, addr: int) -> bool:
    """Entries at a filesystem's root that are its own structures, not files."""
    if place.ntfs:
        return raw.startswith(b"$") and addr <= _NTFS_LAST_SYSTEM_FILE
    if place.fs.startswith(("fat", "exfat")):
        return raw.endswith(b"(Volume Label Entry)") or (
            place.fs == "exfat" and raw in _EXFAT_SYSTEM
        )
    return False


def _row(
    entry: Any, meta: Any, mtype: int, path: str, parent: str, name: str, place: _Place
) -> tuple[object, ...]:
    """One catalog row in ``catalog.schema.ROW_FIELDS`` order."""
    kind = _TYPES.get(mtype, "other")
    size = int(meta.size)
    storage, extents, inline, link = "none", None, None, None
    if mtype == _REG:
        reparse = _ntfs_link(entry) if place.ntfs else None
        if reparse is not None:
            kind, link, size = "symlink", reparse, len(reparse.encode())
        elif size > 0:
            storage, extents, inline = _file_data(entry, size, place)
    elif mtype == _LNK:
        target = meta.link
        link = _decode(target) if target else ""
        size = len(target or b"")
    mtime, ctime = int(meta.mtime), int(meta.ctime)
    return (
        place.disk,
        place.partition,
        place.fs,
        path,
        parent,
        name,
        kind,
        size,
        int(meta.mode) & 0o7777,
        int(meta.uid) & 0xFFFFFFFF,
        int(meta.gid) & 0xFFFFFFFF,
        mtime * 1_000_000_000 + int(meta.mtime_nano) if mtime else None,
        ctime * 1_000_000_000 + int(meta.ctime_nano) if ctime else None,
        int(meta.addr),
        link,
        storage,
        extents,
        inline,
        None,
    )


def _file_data(
    entry: Any, size: int, place: _Place
) -> tuple[str, list[Extent] | None, bytes | None]:
    """``(storage, extents, inline)`` of a regular file's data (module docstring)."""
    attr = _data_attribute(entry, place.ntfs)
    if attr is None:
        return "fs", None, None
    flags = int(attr.info.flags)
    if flags & (_ATTR_COMP | _ATTR_ENC):
        return "fs", None, None
    if flags & _ATTR_NONRES:
        extents = _extents(attr, size, place)
        if extents is None:
            return "fs", None, None
        return ("extents" if extents else "none"), extents, None
    if flags & _ATTR_RES and size <= MAX_INLINE:
        info = attr.info
        data = entry.read_random(0, size, int(info.type), int(info.id))
        if len(data) == size:
            return "inline", None, bytes(data)
    return "fs", None, None


def _data_attribute(entry: Any, ntfs: bool) -> Any | None:
    """The file's default data stream (NTFS: the unnamed ``$DATA``)."""
    for attr in entry:
        info = attr.info
        if int(info.type) in _DATA_TYPES and not (ntfs and info.name):
            return attr
    return None


def _extents(attr: Any, size: int, place: _Place) -> list[Extent] | None:
    """Disk extents of a non-resident attribute, clipped to ``size``; None if encrypted."""
    bs = place.block_size
    out: list[Extent] = []
    for run in attr:
        flags = int(run.flags)
        if flags & _RUN_ENC:
            return None
        start = int(run.offset) * bs
        if start >= size:
            break
        if flags & _RUN_HOLE:
            continue
        length = min(int(run.len) * bs, size - start)
        disk = place.volume_offset + int(run.addr) * bs
        if out and out[-1][0] + out[-1][2] == start and out[-1][1] + out[-1][2] == disk:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + length)
        else:
            out.append((start, disk, length))
    return out


def _ntfs_link(entry: Any) -> str | None:
    """The target of an NTFS symlink, junction or WSL symlink; None for other files."""
    for attr in entry:
        info = attr.info
        if int(info.type) == _NTFS_REPARSE and 8 <= int(info.size) <= MAX_INLINE:
            data = bytes(entry.read_random(0, int(info.size), _NTFS_REPARSE, int(info.id)))
            return parse_reparse_point(data)
    return None


def parse_reparse_point(data: bytes) -> str | None:
    """A symlink target from NTFS reparse data (``REPARSE_DATA_BUFFER``), or None."""
    if len(data) < 8:
        return None
    tag = struct.unpack_from("<I", data)[0]
    body = data[8:]
    try:
        if tag == _REPARSE_LX_SYMLINK and len(body) >= 4:
            return _decode(body[4:])
        if tag in (_REPARSE_SYMLINK, _REPARSE_MOUNT_POINT):
            sub_off, sub_len, print_off, print_len = struct.unpack_from("<4H", body)
            buffer = body[12:] if tag == _REPARSE_SYMLINK else body[8:]
            relative = tag == _REPARSE_SYMLINK and struct.unpack_from("<I", body, 8)[0] & 1
            off, length = (print_off, print_len) if print_len else (sub_off, sub_len)
            target = buffer[off : off + length].decode("utf-16-le", "replace")
            return _windows_target(target, bool(relative))
    except struct.error:
        return None
    return None


def _windows_target(target: str, relative: bool) -> str:
    """``\\??\\C:\\dir\\f`` → ``/dir/f``; relative targets keep their form, with slashes."""
    target = target.removeprefix("\\??\\").replace("\\", "/")
    if not relative and len(target) >= 2 and target[1] == ":":
        target = target[2:] or "/"
    return target


def _decode(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    return raw.decode("utf-8", "backslashreplace")


def _ns(meta: Any, field: str) -> int | None:
    seconds = int(getattr(meta, field))
    if seconds == 0:
        return None
    return seconds * 1_000_000_000 + int(getattr(meta, f"{field}_nano", 0) or 0)


def _tsk_reason(error: BaseException) -> str:
    """TSK's message without pytsk3's source locations: the part after the last ': '."""
    text = " ".join(str(error).split())
    for marker in ("with error: ", "error: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    return text or type(error).__name__
