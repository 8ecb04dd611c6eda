"""The chunk store: every chunk of every image, deduplicated by digest, in packs.

``ChunkIndex.load`` reads every pack index into one Arrow table (digest → pack, offset, length,
codec) for vectorised lookups (``pyarrow.compute.index_in``). ``ChunkWriter`` packs new chunks
into ~8 MiB packs; it writes a pack, then its index, so anything indexed is readable.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from r2b.image.format import (
    CHUNK_INDEX_PREFIX,
    CHUNK_SCHEMA,
    chunk_index_key,
    chunk_pack_key,
    pack_of_index_key,
    read_table,
    write_table,
)
from r2b.journal.format import DIGEST_SIZE
from r2b.journal.snapshot import digest_array, digest_column
from r2b.store.base import ObjectStore

PACK_TARGET = 8 << 20


@dataclass
class Located:
    """Where chunks are: ``found`` per digest, and for found ones their pack and place."""

    found: npt.NDArray[np.bool_]
    pack: npt.NDArray[np.int32]
    offset: npt.NDArray[np.int64]
    length: npt.NDArray[np.int64]
    codec: npt.NDArray[np.uint8]
    plain_length: npt.NDArray[np.int64]


class ChunkIndex:
    def __init__(self, table: pa.Table, pack_ids: list[str]) -> None:
        self.table = table  # CHUNK_SCHEMA columns + "pack" (position in pack_ids)
        self.pack_ids = pack_ids

    @staticmethod
    def load(store: ObjectStore) -> ChunkIndex:
        tables: list[pa.Table] = []
        pack_ids: list[str] = []
        for key in store.list(CHUNK_INDEX_PREFIX):
            if not key.endswith(".arrow"):
                continue
            table = read_table(store.get(key), key, "r2b.chunk.index")
            tables.append(
                table.append_column("pack", pa.array(np.full(len(table), len(pack_ids), np.int32)))
            )
            pack_ids.append(pack_of_index_key(key))
        if not tables:
            empty = CHUNK_SCHEMA.empty_table().append_column("pack", pa.array([], pa.int32()))
            return ChunkIndex(empty, [])
        return ChunkIndex(pa.concat_tables(tables, promote_options="none"), pack_ids)

    @property
    def pack_keys(self) -> list[str]:
        return [chunk_pack_key(p) for p in self.pack_ids]

    def digests(self) -> pa.Array:
        return self.table.column("digest").combine_chunks()

    def contains(self, digests: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        if len(digests) == 0:
            return np.zeros(0, dtype=bool)
        hits = pc.is_in(digest_array(digests), value_set=self.digests())
        return np.asarray(hits.to_numpy(zero_copy_only=False), dtype=bool)

    def locate(self, digests: npt.NDArray[np.uint8]) -> Located:
        n = len(digests)
        if n == 0 or len(self.table) == 0:
            zeros = np.zeros(n, np.int64)
            return Located(
                np.zeros(n, bool),
                np.full(n, -1, np.int32),
                zeros,
                zeros,
                np.zeros(n, np.uint8),
                zeros,
            )
        rows = pc.index_in(digest_array(digests), value_set=self.digests())
        found = rows.is_valid().to_numpy(zero_copy_only=False).astype(bool)
        at = rows.fill_null(0).to_numpy(zero_copy_only=False)
        col = {
            name: self.table.column(name).to_numpy()
            for name in ("pack", "offset", "length", "codec", "plain_length")
        }
        return Located(
            found,
            np.where(found, col["pack"][at], -1).astype(np.int32),
            col["offset"][at].astype(np.int64),
            col["length"][at].astype(np.int64),
            col["codec"][at].astype(np.uint8),
            col["plain_length"][at].astype(np.int64),
        )


@dataclass
class _OpenPack:
    data: bytearray
    digests: list[bytes]
    codecs: list[int]
    offsets: list[int]
    lengths: list[int]
    plain_lengths: list[int]


def _new_pack() -> _OpenPack:
    return _OpenPack(bytearray(), [], [], [], [], [])


class ChunkWriter:
    """Stores new chunks, each digest once per writer. Thread-safe."""

    def __init__(self, store: ObjectStore, target: int = PACK_TARGET) -> None:
        self.store = store
        self.target = target
        self.chunks_written = 0
        self.bytes_written = 0
        self.keys: list[str] = []  # pack and index objects written
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()
        self._open = _new_pack()

    def add(self, digest: bytes, codec: int, payload: bytes, plain_length: int) -> bool:
        """Store a chunk unless this writer already has it; True when it was new."""
        with self._lock:
            if digest in self._seen:
                return False
            self._seen.add(digest)
            pack = self._open
            pack.offsets.append(len(pack.data))
            pack.data += payload
            pack.digests.append(digest)
            pack.codecs.append(codec)
            pack.lengths.append(len(payload))
            pack.plain_lengths.append(plain_length)
            self.chunks_written += 1
            self.bytes_written += len(payload)
            full = len(pack.data) >= self.target
            if full:
                self._open = _new_pack()
        if full:
            self._write(pack)
        return True

    def flush(self) -> None:
        with self._lock:
            pack, self._open = self._open, _new_pack()
        if pack.digests:
            self._write(pack)

    def _write(self, pack: _OpenPack) -> None:
        pack_id = uuid.uuid4().hex[:16]
        self.store.put(chunk_pack_key(pack_id), bytes(pack.data))
        table = pa.table(
            {
                "digest": pa.array(pack.digests, pa.binary(DIGEST_SIZE)),
                "codec": pa.array(pack.codecs, pa.uint8()),
                "offset": pa.array(pack.offsets, pa.uint64()),
                "length": pa.array(pack.lengths, pa.uint32()),
                "plain_length": pa.array(pack.plain_lengths, pa.uint32()),
            }
        )
        self.store.put(chunk_index_key(pack_id), write_table(table, CHUNK_SCHEMA))
        with self._lock:
            self.keys += [chunk_pack_key(pack_id), chunk_index_key(pack_id)]


__all__ = ["ChunkIndex", "ChunkWriter", "Located", "digest_array", "digest_column"]
