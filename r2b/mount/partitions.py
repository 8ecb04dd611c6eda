"""A stored disk's partition table (none, MBR or GPT; BSD, Mac, Sun where TSK reads them).

The Sleuth Kit (``pytsk3``, Apache-2.0) reads the disk through ``TskImage``, an ``Img_Info``
whose reads come from an ``ImageFile``. pytsk3 was chosen over the dissect packages (AGPL,
and they misread some FAT chains here): it read ext2/3/4, FAT12/16/32 and NTFS correctly and
walks ~100k files a second through a chunk-backed reader.

Partitions are named the way Linux numbers them, so ``/p2`` is what ``/dev/sda2`` was: a GPT
entry's number; an MBR primary's slot (1-4) and logical partitions 5, 6... in chain order.
Extended-partition containers, the tables themselves and unallocated space are left out. A
disk without a recognised partition table is one volume named ``""`` covering it all (a
filesystem directly on the disk, or nothing readable: the walker says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytsk3

from r2b.errors import R2BError
from r2b.mount.image import ImageFile

_SCHEMES = {1: "mbr", 2: "bsd", 4: "sun", 8: "mac", 16: "gpt"}


class TskImage(pytsk3.Img_Info):  # type: ignore[misc]
    """An ``ImageFile`` as a TSK image. An error raised while TSK reads (a store outage, a
    corrupt block) reaches TSK as a failed read; it is kept in ``error`` so the caller can
    raise the real one instead of TSK's message."""

    def __init__(self, image: ImageFile) -> None:
        self.image = image
        self.error: R2BError | None = None
        super().__init__(url="", type=pytsk3.TSK_IMG_TYPE_EXTERNAL)

    def close(self) -> None:
        pass

    def read(self, offset: int, size: int) -> bytes:
        try:
            return self.image.pread(offset, size)
        except R2BError as e:
            self.error = e
            raise

    def get_size(self) -> int:
        return self.image.size


@dataclass(frozen=True)
class Volume:
    """A region of the disk that may hold a filesystem: ``name`` ``p<N>`` or ``""``."""

    name: str
    offset: int
    length: int
    description: str


@dataclass(frozen=True)
class PartitionTable:
    scheme: str  # gpt, mbr, ..., or "none"
    volumes: list[Volume]


def read_partitions(image: TskImage) -> PartitionTable:
    """The disk's partitions, or one whole-disk volume when it has no partition table."""
    try:
        system = pytsk3.Volume_Info(image)
    except (OSError, RuntimeError):
        if image.error is not None:
            raise image.error from None
        return PartitionTable("none", [Volume("", 0, image.get_size(), "whole disk")])
    sector = int(system.info.block_size)
    scheme = _SCHEMES.get(int(system.info.vstype), f"vs{int(system.info.vstype)}")
    parts = [p for p in system if int(p.flags) & pytsk3.TSK_VS_PART_FLAG_ALLOC]
    numbers = _linux_numbers(scheme, parts)
    volumes = [
        Volume(
            f"p{number}",
            int(part.start) * sector,
            int(part.len) * sector,
            part.desc.decode("utf-8", "replace") if part.desc else "",
        )
        for number, part in zip(numbers, parts, strict=True)
    ]
    return PartitionTable(scheme, sorted(volumes, key=lambda v: int(v.name[1:])))


def _linux_numbers(scheme: str, parts: list[Any]) -> list[int]:
    """The number Linux gives each allocated partition (see the module docstring)."""
    if scheme == "gpt":
        return [int(p.slot_num) + 1 for p in parts]
    if scheme == "mbr":
        logical = sorted((int(p.start), i) for i, p in enumerate(parts) if int(p.table_num) > 0)
        order = {i: 5 + rank for rank, (_, i) in enumerate(logical)}
        return [order.get(i, int(p.slot_num) + 1) for i, p in enumerate(parts)]
    return list(range(1, len(parts) + 1))
