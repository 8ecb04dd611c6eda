"""Journal compaction and garbage collection.

The journal must keep: every checkpoint that has no backup yet (the proxy still needs to read
it), the newest ``keep_failover`` checkpoints (failover retention), and the latest cycle. The
oldest of those is the *retained point*; everything before it is folded into a base at that
point (``r2b.journal.format``), after which the older commits and every pack that neither the
base nor a later commit names are deleted. Objects of cycles newer than the latest commit are
left alone: they may belong to a replication cycle running right now.

Order, so that a crash anywhere leaves a valid journal: base tables, base marker (from here on
the journal starts at the base), then old commits, old bases, and unreferenced objects.
"""

from __future__ import annotations

import json
from collections.abc import Set
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from r2b.clock import Clock, iso, utc_now
from r2b.errors import NotFound
from r2b.ids import CheckpointId
from r2b.journal.format import (
    BASE_SCHEMA,
    base_marker_key,
    base_prefix,
    base_table_key,
    journal_prefix,
    read_index,
    write_base,
)
from r2b.journal.snapshot import BlockMap, Journal, digest_array
from r2b.machines import MachineSpec
from r2b.store.base import ObjectStore


@dataclass
class CompactResult:
    machine: str
    base_seq: int
    objects_deleted: int = 0
    bytes_freed: int = 0


def retained_point(journal: Journal, backed_up: Set[str], keep_failover: int) -> int:
    """The oldest cycle the journal must still be able to reproduce (0: nothing committed)."""
    commits = journal.commits()
    if not commits:
        return 0
    candidates = [commits[-1].seq]
    marks = [c for c in commits if c.checkpoint is not None]
    if keep_failover > 0 and marks:
        candidates.append(marks[-keep_failover:][0].seq)
    pending = [c.seq for c in marks if c.checkpoint and c.checkpoint.id not in backed_up]
    candidates.extend(pending[:1])
    return min(candidates)


def compact_journal(
    store: ObjectStore,
    machine: MachineSpec,
    backed_up: Set[CheckpointId] | Set[str],
    keep_failover: int = 3,
    clock: Clock = utc_now,
) -> CompactResult:
    journal = Journal(store, machine.name)
    point = retained_point(journal, set(backed_up), keep_failover)
    if point > journal.base_seq():
        _write_base(store, journal, machine, point, clock)
    result = CompactResult(machine.name, Journal(store, machine.name).base_seq())
    _collect(store, Journal(store, machine.name), result)
    return result


def _write_base(
    store: ObjectStore, journal: Journal, machine: MachineSpec, seq: int, clock: Clock
) -> None:
    for disk in machine.disks:
        bmap = journal.block_map(disk.id, disk.size, disk.block_size, seq)
        store.put(base_table_key(machine.name, seq, disk.id), write_base(_base_table(bmap)))
    marker = {
        "format": "r2b.journal.base",
        "version": 1,
        "seq": seq,
        "time": iso(clock()),
        "disks": [d.id for d in machine.disks],
    }
    store.put_if_absent(base_marker_key(machine.name, seq), json.dumps(marker).encode())


def _base_table(bmap: BlockMap) -> pa.Table:
    rows = np.flatnonzero(bmap.written_seq > 0)
    packs = np.where(bmap.codec[rows] == 0, 0, bmap.pack[rows]).astype(np.int32)
    keys = bmap.pack_keys or [""]
    return pa.Table.from_arrays(
        [
            pa.array(rows, pa.uint64()),
            digest_array(bmap.digests[rows]),
            pa.array(bmap.codec[rows], pa.uint8()),
            pa.DictionaryArray.from_arrays(pa.array(packs, pa.int32()), pa.array(keys)),
            pa.array(bmap.offset[rows], pa.uint64()),
            pa.array(bmap.length[rows], pa.uint32()),
            pa.array(bmap.written_seq[rows], pa.uint64()),
        ],
        schema=BASE_SCHEMA,
    )


def _referenced(store: ObjectStore, journal: Journal, start: int) -> set[str]:
    keep: set[str] = set()
    for commit in journal.commits():
        for cycle in commit.disks.values():
            keep.update(cycle.packs)
            keep.add(cycle.index)
    if start:
        for key in store.list(f"{base_prefix(journal.machine)}{start:012d}"):
            keep.add(key)
            if key.endswith(".arrow"):
                base = read_index(store.get(key), key, "r2b.journal.base")
                codec = base.column("codec").to_numpy()
                indices = base.column("pack_key").combine_chunks()
                used = np.unique(indices.indices.to_numpy()[codec != 0])
                keep.update(indices.dictionary.to_pylist()[i] for i in used)
    return keep


def _collect(store: ObjectStore, journal: Journal, result: CompactResult) -> None:
    start = result.base_seq
    commits = journal.commits()
    latest = commits[-1].seq if commits else 0
    keep = _referenced(store, journal, start)
    prefix = journal_prefix(journal.machine)
    keys = list(store.list(prefix))
    # commits first: once they are gone nothing names the packs below
    ordered = [k for k in keys if "/commits/" in k] + [k for k in keys if "/commits/" not in k]
    for key in ordered:
        name = key.removeprefix(prefix)
        seq = int(name.split("/", 1)[1][:12])
        if key in keep or seq > latest or (seq >= start and "/commits/" in key):
            continue
        if "/base/" in key and seq >= start:
            continue
        _delete(store, key, result)


def _delete(store: ObjectStore, key: str, result: CompactResult) -> None:
    try:
        result.bytes_freed += store.size(key)
    except NotFound:
        return
    store.delete(key)
    result.objects_deleted += 1
