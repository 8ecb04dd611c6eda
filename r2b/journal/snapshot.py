"""Reading the replica journal: committed cycles, checkpoints and replica snapshots.

Only committed cycles exist for a reader (see ``r2b.journal.format``). A *block map* is the
replica snapshot of one disk at one cycle: for every tracking block, where its newest bytes at or
before that cycle are. It is computed with vectorised scatters of each cycle's Arrow index into
numpy arrays (one pass per cycle, none per row), in memory proportional to the disk's block count.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import blake3
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from r2b.blockio import Layout
from r2b.errors import BadInput, NotFound
from r2b.extents import block_count, block_length
from r2b.ids import CheckpointId, DiskId, MachineName, checkpoint_seq
from r2b.journal.format import (
    DIGEST_SIZE,
    Commit,
    base_prefix,
    base_table_key,
    commit_key,
    commits_prefix,
    read_index,
    seq_of_commit_key,
)
from r2b.store.base import ObjectStore


@functools.lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    return blake3.blake3(bytes(length)).digest()


def digest_column(table: pa.Table, name: str = "digest") -> npt.NDArray[np.uint8]:
    """A fixed-size binary column as an (n, 32) uint8 array, without a row loop."""
    column = table.column(name).combine_chunks()
    if len(column) == 0:
        return np.empty((0, DIGEST_SIZE), dtype=np.uint8)
    data = column.buffers()[1]
    flat = np.frombuffer(data, dtype=np.uint8)
    start = column.offset * DIGEST_SIZE
    return flat[start : start + len(column) * DIGEST_SIZE].reshape(-1, DIGEST_SIZE)


def digest_array(digests: npt.NDArray[np.uint8]) -> pa.FixedSizeBinaryArray:
    """An (n, 32) uint8 array as an Arrow fixed-size binary array, without a row loop."""
    flat = np.ascontiguousarray(digests).tobytes()
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(DIGEST_SIZE), len(digests), [None, pa.py_buffer(flat)]
    )


@dataclass(kw_only=True)
class BlockMap(Layout):
    """The replica snapshot of one disk at cycle ``seq``: a ``Layout`` with its provenance.

    ``codec`` 0 means all zeros (written as zeros, or never written); ``pack`` indexes
    ``pack_keys`` (-1 for zero blocks); ``written_seq``: the cycle that wrote it (0: never).
    """

    machine: MachineName
    disk: DiskId
    seq: int = 0
    written_seq: npt.NDArray[np.int64]

    @property
    def blocks(self) -> int:
        return len(self.codec)

    @staticmethod
    def empty(machine: MachineName, disk: DiskId, size: int, block_size: int) -> BlockMap:
        """The map of a disk nothing was replicated for: all zeros."""
        n = block_count(size, block_size)
        digests = np.tile(np.frombuffer(zero_digest(block_size), dtype=np.uint8), (n, 1))
        last = n - 1
        if block_length(last, size, block_size) != block_size:
            tail = zero_digest(block_length(last, size, block_size))
            digests[last] = np.frombuffer(tail, dtype=np.uint8)
        return BlockMap(
            size=size,
            block_size=block_size,
            digests=digests,
            codec=np.zeros(n, np.uint8),
            pack=np.full(n, -1, np.int32),
            offset=np.zeros(n, np.int64),
            length=np.zeros(n, np.int64),
            pack_keys=[],
            machine=machine,
            disk=disk,
            written_seq=np.zeros(n, np.int64),
        )

    def apply(self, seq: int, index: pa.Table, packs: list[str]) -> None:
        """Lay one cycle's index over the map (newer cycles must come later)."""
        if len(index) == 0:
            return
        blocks = index.column("block").to_numpy().astype(np.int64)
        if blocks.max() >= self.blocks:
            raise BadInput(f"cycle {seq} of {self.machine}/{self.disk} names blocks past the disk")
        base = len(self.pack_keys)
        self.pack_keys.extend(packs)
        codec = index.column("codec").to_numpy()
        self.digests[blocks] = digest_column(index)
        self.codec[blocks] = codec
        self.pack[blocks] = np.where(codec == 0, -1, index.column("pack").to_numpy() + base)
        self.offset[blocks] = index.column("offset").to_numpy()
        self.length[blocks] = index.column("length").to_numpy()
        self.written_seq[blocks] = seq

    def apply_base(self, seq: int, base: pa.Table) -> None:
        """Start from a compacted base at ``seq`` (rows carry their pack keys and cycles)."""
        self.seq = seq
        if len(base) == 0:
            return
        blocks = base.column("block").to_numpy().astype(np.int64)
        if blocks.max() >= self.blocks:
            raise BadInput(f"base {seq} of {self.machine}/{self.disk} names blocks past the disk")
        keys = base.column("pack_key").combine_chunks()
        offset = len(self.pack_keys)
        self.pack_keys.extend(keys.dictionary.to_pylist())
        codec = base.column("codec").to_numpy()
        self.digests[blocks] = digest_column(base)
        self.codec[blocks] = codec
        self.pack[blocks] = np.where(codec == 0, -1, keys.indices.to_numpy() + offset)
        self.offset[blocks] = base.column("offset").to_numpy()
        self.length[blocks] = base.column("length").to_numpy()
        self.written_seq[blocks] = base.column("written_seq").to_numpy()


class Journal:
    """Read access to one machine's journal. Commits are immutable and cached per instance."""

    def __init__(self, store: ObjectStore, machine: MachineName) -> None:
        self.store = store
        self.machine = machine
        self._commits: dict[int, Commit] = {}

    def base_seq(self) -> int:
        """Where the journal starts: the newest compacted base (0: from the beginning)."""
        markers = [
            int(k.rsplit("/", 1)[1].removesuffix(".json"))
            for k in self.store.list(base_prefix(self.machine))
            if k.endswith(".json")
        ]
        return max(markers, default=0)

    def commits(self) -> list[Commit]:
        """The journal's commits, oldest first, from its base on."""
        start = self.base_seq()
        for key in self.store.list(commits_prefix(self.machine)):
            if key.endswith(".json"):
                seq = seq_of_commit_key(key)
                if seq >= start and seq not in self._commits:
                    self._commits[seq] = Commit.from_json(self.store.get(key), key)
        return [self._commits[s] for s in sorted(self._commits) if s >= start]

    def commit(self, seq: int) -> Commit:
        if seq not in self._commits:
            key = commit_key(self.machine, seq)
            self._commits[seq] = Commit.from_json(self.store.get(key), key)
        return self._commits[seq]

    def latest(self) -> Commit | None:
        commits = self.commits()
        return commits[-1] if commits else None

    def checkpoints(self) -> list[Commit]:
        return [c for c in self.commits() if c.checkpoint is not None]

    def checkpoint(self, checkpoint: CheckpointId | str) -> Commit:
        seq = checkpoint_seq(checkpoint)
        try:
            commit = self.commit(seq)
        except NotFound:
            raise NotFound(f"{self.machine}/{checkpoint}", "checkpoint") from None
        if commit.checkpoint is None or commit.checkpoint.id != checkpoint:
            raise NotFound(f"{self.machine}/{checkpoint}", "checkpoint")
        return commit

    def block_map(
        self, disk: DiskId, size: int, block_size: int, upto: int | None = None
    ) -> BlockMap:
        """The replica snapshot of ``disk`` at cycle ``upto`` (default: the latest)."""
        bmap = BlockMap.empty(self.machine, disk, size, block_size)
        start = self.base_seq()
        if upto is not None and upto < start:
            raise NotFound(f"{self.machine} cycle {upto} (compacted into {start})", "journal cycle")
        if start:
            key = base_table_key(self.machine, start, disk)
            bmap.apply_base(start, read_index(self.store.get(key), key, "r2b.journal.base"))
        for commit in self.commits():
            if commit.seq <= start:
                continue
            if upto is not None and commit.seq > upto:
                break
            bmap.seq = commit.seq
            cycle = commit.disks.get(disk)
            if cycle is None or not cycle.index:
                continue
            if cycle.size != size or cycle.block_size != block_size:
                raise BadInput(f"cycle {commit.seq} of {self.machine}/{disk} has another geometry")
            index = read_index(self.store.get(cycle.index), cycle.index)
            bmap.apply(commit.seq, index, cycle.packs)
        return bmap
