"""Failover: materialise a disk of the replica, at the latest cycle or at a checkpoint.

Blocks are fetched and verified by ``r2b.blockio.fetch_blocks``; all-zero blocks are not
written (the output is sparse). ``write_disk`` is shared with whole-disk restore of backup
images: the output appears under its final name only when every block checked out (it is
written to ``<name>.partial`` and renamed), else the partial file is removed and the damage
returned to the caller, who names it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r2b.blockio import Block, Damage, Layout, fetch_blocks
from r2b.errors import JournalCorrupt
from r2b.journal.snapshot import BlockMap
from r2b.store.base import ObjectStore

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Materialised:
    path: Path
    sha256: str
    bytes_written: int


def write_disk(
    store: ObjectStore,
    layout: Layout,
    out: Path,
    workers: int = 4,
    progress: Progress | None = None,
) -> Materialised | Damage:
    """Write the disk ``layout`` describes to ``out`` (sparse); the damage if any block failed."""
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as f:
            f.truncate(layout.size)
            fd = f.fileno()

            def deliver(block: Block) -> None:
                os.pwrite(fd, block.plain, block.number * layout.block_size)
                if progress:
                    progress(len(block.plain))

            damage = fetch_blocks(store, layout, layout.stored_blocks(), deliver, workers)
            os.fsync(fd)
    except BaseException:  # a store outage, Ctrl-C: leave nothing half written
        partial.unlink(missing_ok=True)
        raise
    if damage:
        partial.unlink()
        return damage
    os.replace(partial, out)
    return Materialised(out, sha256_of(out), layout.size)


def materialise(
    store: ObjectStore,
    bmap: BlockMap,
    out: Path,
    workers: int = 4,
    progress: Progress | None = None,
) -> Materialised:
    """Write the replica snapshot ``bmap`` to ``out``; ``JournalCorrupt`` names any damage."""
    result = write_disk(store, bmap, out, workers, progress)
    if isinstance(result, Damage):
        key, (reason, _) = sorted(result.by_key.items())[0]
        raise JournalCorrupt(bmap.machine, bmap.disk, key, sorted(result.blocks), reason)
    return result


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()
