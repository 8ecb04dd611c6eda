"""A protected disk as a block source: a raw image file or a block device, read with pread.

qcow2 and other formats are read through ``qemu-nbd``/``qemu-img convert`` by the caller; here
a disk is a flat byte range whose size is a multiple of 512 bytes (a sector).
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
from types import TracebackType

from r2b.errors import NotADisk

SECTOR = 512


def probe_disk(path: str) -> int:
    """Size in bytes of the disk at ``path``; ``NotADisk`` when it cannot be one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotADisk(path, "no such file or device") from None
    except OSError as e:
        raise NotADisk(path, e.strerror or str(e)) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a file or block device"
        raise NotADisk(path, kind)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise NotADisk(path, f"cannot open it: {e.strerror}") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    if size == 0:
        raise NotADisk(path, "it is empty")
    if size % SECTOR:
        raise NotADisk(path, f"its size {size} is not a multiple of {SECTOR} bytes")
    return size


def data_extents(fd: int, size: int) -> list[tuple[int, int]] | None:
    """(start, end) of the regions of a sparse file that hold data, by SEEK_DATA/SEEK_HOLE;
    ``None`` when the file system cannot tell (then everything counts as data)."""
    extents = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after offset
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, min(end, size)))
            offset = end
    except OSError:
        return None
    return extents


def in_hole(extents: list[tuple[int, int]], ends: list[int], offset: int, length: int) -> bool:
    """Whether ``[offset, offset + length)`` overlaps no data extent.

    ``extents`` are sorted, disjoint (start, end) pairs and ``ends`` their ends.
    """
    i = bisect.bisect_right(ends, offset)
    return i >= len(extents) or extents[i][0] >= offset + length


class DiskReader:
    """Random-access, read-only view of a disk. Thread-safe (pread has no shared offset).

    For a sparse image file it knows where the holes are (as of opening it), so a scan can
    skip them: a hole reads as zeros, and a replica of zeros costs nothing.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = probe_disk(path)
        self._fd = os.open(path, os.O_RDONLY)
        regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        extents = data_extents(self._fd, self.size) if regular else None
        self._data = extents
        self._ends = [end for _, end in extents] if extents is not None else []

    def is_hole(self, offset: int, length: int) -> bool:
        """Whether the range is known to read as zeros without reading it."""
        return self._data is not None and in_hole(self._data, self._ends, offset, length)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != min(length, max(0, self.size - offset)):
            raise NotADisk(self.path, f"short read at offset {offset} (did it shrink?)")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DiskReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
