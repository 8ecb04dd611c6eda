"""The replicator: one replication cycle of a machine's disks into its replica journal.

A cycle reads each disk in runs of tracking blocks (a thread pool takes each run through
read → BLAKE3 → compare with the last cycle's digest → zstd), packs the changed blocks into
~8 MiB pack objects uploaded by a second small pool, writes one Arrow index per disk, and makes
the cycle visible with one commit object written last with ``put_if_absent`` (format in
``r2b.journal.format``). Unchanged blocks cost nothing on the WAN, and neither do all-zero blocks
(recognised by their digest). A crash at any point before the commit leaves only orphan objects
that no reader sees; the next cycle starts again from the last commit.

Changed extents from outside (a hypervisor's change tracking) only narrow *which* blocks are
read: the same digest comparison then decides what is sent.

For a checkpoint with a filesystem freeze, the changed blocks are captured into a local spool
while frozen and uploaded after the thaw, so the application is frozen for the time of a local
read of the disk, not for the WAN transfer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import blake3
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import zstandard

from r2b.clock import Clock, iso, utc_now
from r2b.errors import ConflictError, DiskSizeChanged
from r2b.extents import (
    Extent,
    Run,
    block_length,
    blocks_to_runs,
    extents_to_blocks,
    whole_disk_runs,
)
from r2b.ids import CheckpointId, DiskId, checkpoint_id
from r2b.journal.format import (
    CODEC_RAW,
    CODEC_ZERO,
    CODEC_ZSTD,
    DIGEST_SIZE,
    INDEX_SCHEMA,
    BackupType,
    CheckpointMark,
    Commit,
    Consistency,
    DiskCycle,
    commit_key,
    index_key,
    pack_key,
    write_index,
)
from r2b.journal.snapshot import BlockMap, Journal, digest_array, zero_digest
from r2b.journal.state import DigestCache
from r2b.machines import DiskSpec, MachineSpec
from r2b.quiesce import FrozenWindow
from r2b.source.disk import DiskReader, probe_disk
from r2b.store.base import ObjectStore

RUN_BYTES = 4 << 20  # one read per worker step; large reads keep pread near its ceiling
PACK_TARGET = 8 << 20  # pack objects of ~8 MiB keep the per-request overhead small
ZSTD_LEVEL = 1  # PERFORMANCE.md: level 3 costs ~37% throughput for ~9% ratio

Progress = Callable[[int], None]
Freezer = Callable[[], ContextManager[FrozenWindow]]


@dataclass(frozen=True)
class CheckpointRequest:
    type: BackupType = "incremental"
    consistency: Consistency = "crash"
    app_metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class CycleResult:
    machine: str
    seq: int
    blocks_changed: int
    bytes_changed: int
    bytes_uploaded: int
    disks: dict[DiskId, DiskCycle]
    checkpoint: CheckpointId | None = None
    frozen_ms: float | None = None
    frozen: list[str] = field(default_factory=list)
    consistency: str | None = None  # of the checkpoint, when one was marked


@dataclass
class _RunResult:
    length: int
    blocks: npt.NDArray[np.int64]
    digests: npt.NDArray[np.uint8]
    codecs: list[int]
    payloads: list[bytes]
    raw_lengths: list[int]


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe: one per worker thread.
    comp: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if comp is None:
        comp = _local.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return comp


def encode_block(data: memoryview, digest: bytes) -> tuple[int, bytes]:
    """The codec and payload of one block: nothing for zeros, zstd unless it does not help."""
    if digest == zero_digest(len(data)):
        return CODEC_ZERO, b""
    packed = _compressor().compress(data)
    if len(packed) < len(data):
        return CODEC_ZSTD, packed
    return CODEC_RAW, bytes(data)


def scan_run(
    reader: DiskReader, block_size: int, run: Run, previous: npt.NDArray[np.uint8]
) -> _RunResult:
    """Read one run, hash its blocks, and encode those whose digest differs from ``previous``."""
    start, count = run
    if reader.is_hole(start * block_size, count * block_size):
        return _hole_run(reader.size, block_size, run, previous)
    data = reader.read(start * block_size, count * block_size)
    view = memoryview(data)
    slices = [view[i * block_size : (i + 1) * block_size] for i in range(count)]
    joined = b"".join(blake3.blake3(s).digest() for s in slices)
    digests = np.frombuffer(joined, dtype=np.uint8).reshape(count, DIGEST_SIZE)
    changed = np.flatnonzero((digests != previous[start : start + count]).any(axis=1))
    codecs, payloads = [], []
    for i in changed:
        codec, payload = encode_block(slices[i], joined[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE])
        codecs.append(codec)
        payloads.append(payload)
    return _RunResult(
        len(data),
        changed + start,
        digests[changed],
        codecs,
        payloads,
        [len(slices[i]) for i in changed],
    )


def _hole_run(
    disk_size: int, block_size: int, run: Run, previous: npt.NDArray[np.uint8]
) -> _RunResult:
    """A run inside a hole of a sparse image: all zeros, known without reading or hashing."""
    start, count = run
    lengths = [block_length(b, disk_size, block_size) for b in range(start, start + count)]
    digests = np.frombuffer(b"".join(zero_digest(n) for n in lengths), np.uint8)
    digests = digests.reshape(count, DIGEST_SIZE)
    changed = np.flatnonzero((digests != previous[start : start + count]).any(axis=1))
    return _RunResult(
        sum(lengths),
        changed + start,
        digests[changed],
        [CODEC_ZERO] * len(changed),
        [b""] * len(changed),
        [lengths[i] for i in changed],
    )


class Sink(Protocol):
    def emit(self, key: str, data: bytes) -> None: ...


class UploadSink:
    """Uploads objects on a small thread pool, at most ``depth`` in flight (bounded memory)."""

    def __init__(self, store: ObjectStore, threads: int = 4) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="r2b-upload")
        self._slots = threading.BoundedSemaphore(threads * 2)
        self._futures: list[Future[None]] = []

    def emit(self, key: str, data: bytes) -> None:
        self._slots.acquire()
        future = self._pool.submit(self.store.put, key, data)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def drain(self) -> None:
        """Wait for every upload; raise the first failure."""
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


class SpoolSink:
    """Keeps objects in local files until ``upload`` (used while applications are frozen)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.items: list[tuple[str, Path]] = []

    def emit(self, key: str, data: bytes) -> None:
        path = self.folder / f"{len(self.items):06d}"
        path.write_bytes(data)
        self.items.append((key, path))

    def upload(self, sink: UploadSink) -> None:
        for key, path in self.items:
            sink.emit(key, path.read_bytes())
            path.unlink()


class PackWriter:
    """Concatenates block payloads into pack objects of about ``target`` bytes."""

    def __init__(self, key_for: Callable[[int], str], sink: Sink, target: int = PACK_TARGET):
        self.key_for = key_for
        self.sink = sink
        self.target = target
        self.keys: list[str] = []
        self.bytes_written = 0
        self._buffer = bytearray()

    def add(self, payload: bytes) -> tuple[int, int]:
        """Append a payload; returns (pack number, offset). Empty payloads take no room."""
        if self._buffer and len(self._buffer) + len(payload) > self.target:
            self._flush()
        offset = len(self._buffer)
        self._buffer += payload
        return len(self.keys), offset

    def finish(self) -> list[str]:
        if self._buffer:
            self._flush()
        return self.keys

    def _flush(self) -> None:
        key = self.key_for(len(self.keys))
        self.sink.emit(key, bytes(self._buffer))
        self.bytes_written += len(self._buffer)
        self.keys.append(key)
        self._buffer = bytearray()


@dataclass
class _Capture:
    spec: DiskSpec
    index: pa.Table
    packs: list[str]
    pack_bytes: int
    bytes_changed: int
    digests: npt.NDArray[np.uint8]


class Replicator:
    """Runs replication cycles of one machine into ``store``."""

    def __init__(
        self,
        store: ObjectStore,
        machine: MachineSpec,
        state_dir: Path,
        clock: Clock = utc_now,
        workers: int = 2,
        uploaders: int = 4,
    ) -> None:
        self.store = store
        self.machine = machine
        self.cache = DigestCache(state_dir, store.url)
        self.clock = clock
        self.workers = workers
        self.uploaders = uploaders
        self._cached: set[DiskId] = set()  # disks whose digests came from the local cache

    def cycle(
        self,
        changed_extents: Mapping[DiskId, Sequence[Extent]] | None = None,
        checkpoint: CheckpointRequest | None = None,
        freeze: Freezer | None = None,
        progress: Progress | None = None,
    ) -> CycleResult:
        """Replicate what changed since the last commit, optionally marking a checkpoint."""
        self._check_sizes()
        self._cached.clear()
        journal = Journal(self.store, self.machine.name)
        latest = journal.latest()
        seq = (latest.seq if latest else 0) + 1
        run = uuid.uuid4().hex[:12]
        uploads = UploadSink(self.store, self.uploaders)
        frozen: list[str] = []
        frozen_ms: float | None = None
        try:
            previous = {
                d.id: self._previous_digests(journal, latest, d) for d in self.machine.disks
            }
            if freeze is None:
                captures = self._capture_all(seq, run, previous, changed_extents, uploads, progress)
            else:
                _remove_dead_spools()
                with tempfile.TemporaryDirectory(prefix=f"{SPOOL_PREFIX}{os.getpid()}-") as folder:
                    spool = SpoolSink(Path(folder))
                    with freeze() as window:
                        captures = self._capture_all(
                            seq, run, previous, changed_extents, spool, progress
                        )
                    frozen, frozen_ms = window.mounts, window.ms
                    spool.upload(uploads)
            disks = self._write_indexes(seq, run, captures, uploads)
        finally:
            uploads.drain()
        changed = sum(len(c.index) for c in captures)
        if latest is not None and changed == 0 and checkpoint is None:
            # Nothing changed and nothing to mark: the last commit still describes the disks
            # (and so do these digests, which may have just been rebuilt from the journal).
            for capture in captures:
                if capture.spec.id in self._cached:
                    continue
                self.cache.save(
                    self.machine.name, capture.spec.id, latest.seq, latest.run, capture.digests
                )
            return CycleResult(self.machine.name, latest.seq, 0, 0, 0, disks)
        mark = self._mark(seq, checkpoint, frozen_ms, frozen)
        commit = Commit(
            self.machine.name,
            seq,
            run,
            iso(self.clock()),
            disks,
            sum(d.bytes_uploaded for d in disks.values()),
            mark,
        )
        data = commit.to_json()
        if not self.store.put_if_absent(commit_key(self.machine.name, seq), data):
            raise ConflictError(
                f"another replicator committed cycle {seq} of {self.machine.name} first; run again"
            )
        for capture in captures:
            self.cache.save(self.machine.name, capture.spec.id, seq, run, capture.digests)
        return CycleResult(
            self.machine.name,
            seq,
            sum(len(c.index) for c in captures),
            sum(c.bytes_changed for c in captures),
            commit.bytes_uploaded + len(data),
            disks,
            mark.id if mark else None,
            frozen_ms,
            frozen,
            mark.consistency if mark else None,
        )

    def _check_sizes(self) -> None:
        for disk in self.machine.disks:
            now = probe_disk(disk.path)
            if now != disk.size:
                raise DiskSizeChanged(
                    f"{self.machine.name}/{disk.id} ({disk.path})", disk.size, now
                )

    def _previous_digests(
        self, journal: Journal, latest: Commit | None, disk: DiskSpec
    ) -> npt.NDArray[np.uint8]:
        empty = BlockMap.empty(self.machine.name, disk.id, disk.size, disk.block_size)
        if latest is None:
            return empty.digests
        cached = self.cache.load(self.machine.name, disk.id, latest.seq, latest.run, empty.blocks)
        if cached is not None:
            self._cached.add(disk.id)
            return cached
        return journal.block_map(disk.id, disk.size, disk.block_size, latest.seq).digests

    def _capture_all(
        self,
        seq: int,
        run: str,
        previous: Mapping[DiskId, npt.NDArray[np.uint8]],
        changed_extents: Mapping[DiskId, Sequence[Extent]] | None,
        sink: Sink,
        progress: Progress | None,
    ) -> list[_Capture]:
        captures = []
        for disk in self.machine.disks:
            runs = self._runs(disk, changed_extents)
            key_for = functools.partial(pack_key, self.machine.name, seq, run, disk.id)
            packs = PackWriter(key_for, sink)
            captures.append(self._capture(disk, runs, previous[disk.id], packs, progress))
        return captures

    def _runs(
        self, disk: DiskSpec, extents: Mapping[DiskId, Sequence[Extent]] | None
    ) -> Iterable[Run]:
        per_run = max(1, RUN_BYTES // disk.block_size)
        if extents is None:
            return whole_disk_runs(disk.size, disk.block_size, per_run)
        blocks = extents_to_blocks(extents.get(disk.id, ()), disk.block_size, disk.size)
        return blocks_to_runs(blocks, per_run)

    def _capture(
        self,
        disk: DiskSpec,
        runs: Iterable[Run],
        previous: npt.NDArray[np.uint8],
        packs: PackWriter,
        progress: Progress | None,
    ) -> _Capture:
        digests = previous.copy()
        blocks: list[npt.NDArray[np.int64]] = []
        codecs: list[int] = []
        pack_nos: list[int] = []
        offsets: list[int] = []
        lengths: list[int] = []
        changed_bytes = 0
        with DiskReader(disk.path) as reader:
            for result in self._scan(reader, disk.block_size, runs, previous):
                blocks.append(result.blocks)
                digests[result.blocks] = result.digests
                for codec, payload in zip(result.codecs, result.payloads, strict=True):
                    pack_no, offset = packs.add(payload)
                    codecs.append(codec)
                    pack_nos.append(pack_no)
                    offsets.append(offset)
                    lengths.append(len(payload))
                changed_bytes += sum(result.raw_lengths)
                if progress:
                    progress(result.length)
        keys = packs.finish()
        all_blocks = np.concatenate(blocks) if blocks else np.empty(0, np.int64)
        index = pa.Table.from_arrays(
            [
                pa.array(all_blocks, pa.uint64()),
                digest_array(digests[all_blocks]),
                pa.array(codecs, pa.uint8()),
                pa.array(pack_nos, pa.uint32()),
                pa.array(offsets, pa.uint64()),
                pa.array(lengths, pa.uint32()),
            ],
            schema=INDEX_SCHEMA,
        )
        return _Capture(disk, index, keys, packs.bytes_written, changed_bytes, digests)

    def _scan(
        self,
        reader: DiskReader,
        block_size: int,
        runs: Iterable[Run],
        previous: npt.NDArray[np.uint8],
    ) -> Iterator[_RunResult]:
        """Results of ``scan_run`` in order, a bounded number of runs in flight."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="r2b-scan") as pool:
            window: deque[Future[_RunResult]] = deque()
            try:
                for run in runs:
                    window.append(pool.submit(scan_run, reader, block_size, run, previous))
                    if len(window) > self.workers * 2:
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()
            finally:
                for future in window:
                    future.cancel()

    def _write_indexes(
        self, seq: int, run: str, captures: list[_Capture], sink: Sink
    ) -> dict[DiskId, DiskCycle]:
        disks = {}
        for c in captures:
            key, data = "", b""
            if len(c.index):  # an unchanged disk costs no index object
                key = index_key(self.machine.name, seq, run, c.spec.id)
                data = write_index(c.index)
                sink.emit(key, data)
            disks[c.spec.id] = DiskCycle(
                c.spec.size,
                c.spec.block_size,
                key,
                c.packs,
                len(c.index),
                c.bytes_changed,
                c.pack_bytes + len(data),
            )
        return disks

    def _mark(
        self,
        seq: int,
        request: CheckpointRequest | None,
        frozen_ms: float | None,
        frozen: list[str],
    ) -> CheckpointMark | None:
        if request is None:
            return None
        consistency = request.consistency
        if consistency == "crash" and frozen:
            consistency = "filesystem"
        return CheckpointMark(
            checkpoint_id(seq),
            request.type,
            iso(self.clock()),
            consistency,
            round(frozen_ms or 0.0, 3),
            list(frozen),
            request.app_metadata,
        )


SPOOL_PREFIX = "r2b-spool-"


def _remove_dead_spools() -> None:
    """Spools of replicators that were killed (SIGKILL leaves them): their pid is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*-*"):
        pid = folder.name.removeprefix(SPOOL_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def no_freeze() -> ContextManager[FrozenWindow]:
    return contextlib.nullcontext(FrozenWindow([], 0.0))
