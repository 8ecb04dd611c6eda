"""The replica journal format (version 1): how replicated blocks are laid out in the store.

A machine's disks are cut into fixed *tracking blocks* of ``block_size`` bytes, 32 KiB by
default, chosen with ``bench/blocksize.py`` on a 1 GiB mixed image with a 1% scattered change of
4 KiB writes: bytes uploaded per byte changed were 2.4 / 3.9 / 6.5 / 11 / 18 for 16 / 32 / 64 /
128 / 256 KiB blocks, while the no-change scan stayed at 4-5 GB/s (3-4x a disk's read speed)
down to 32 KiB and the digest map costs 1 MiB per GiB of disk at 32 KiB (2 MiB at 16 KiB, too
much for multi-TiB disks). The hash is BLAKE3-256: 3x SHA-256's speed here, cryptographic, so a
digest also names a block's content for deduplication. Each replication *cycle* appends the
blocks that changed since the previous cycle, and is made visible by one small commit object
written last::

    machines/<machine>.json                          machine registration (r2b.machines)
    journal/<machine>/packs/<seq>-<run>-<disk>-<n>.pack   changed blocks, concatenated
    journal/<machine>/index/<seq>-<run>-<disk>.arrow     Arrow IPC: one row per changed block
    journal/<machine>/commits/<seq>.json                 the commit (create-if-absent)
    journal/<machine>/base/<seq>-<disk>.arrow            compacted snapshot at <seq> (BASE_SCHEMA)
    journal/<machine>/base/<seq>.json                    the base marker, written last

``<seq>`` is the cycle number, 12 zero-padded digits, starting at 1; ``<run>`` is a random id of
the replicator run that wrote the objects, so two replicators racing for the same ``<seq>`` never
overwrite each other's data: exactly one commit wins (``put_if_absent``), the loser's packs are
orphans that garbage collection removes. Objects not named by a commit do not exist for readers.

A pack is the concatenation of block payloads, each encoded on its own (so a ranged GET reads one
block): ``codec`` 1 = raw bytes, 2 = one zstd frame. All-zero blocks have codec 0 and no
payload. The index table has the columns of ``INDEX_SCHEMA``; ``digest`` is the BLAKE3-256 of the
block's plain bytes (the partial last block is hashed at its real length), ``pack`` is the
position of the pack's key in the commit's ``packs`` list for that disk.

The commit object is JSON::

    {"format": "r2b.journal.commit", "version": 1, "machine": "web1", "seq": 3, "run": "9f..",
     "time": "2026-11-27T04:45:00+00:00",
     "disks": {"disk0": {"size": 67108864, "block_size": 65536, "index": "journal/...arrow",
                         "packs": ["journal/...pack"], "blocks_changed": 12,
                         "bytes_changed": 786432, "bytes_uploaded": 20480}},
     "bytes_uploaded": 21000,
     "checkpoint": null | {"id": "cp-000003", "type": "full" | "incremental",
                           "time": "...", "consistency": "crash" | "filesystem" | "application",
                           "frozen_ms": 12.5, "frozen": ["/mnt/data"], "app_metadata": null}}

A disk that did not change in a cycle has ``"index": ""`` and no packs; a cycle in which nothing
changed and no checkpoint is marked is not committed at all (it would say nothing new).

Compaction (``r2b.journal.compact``) folds the cycles up to a retained point ``<seq>`` into a
*base*: one Arrow table per disk with a row for every block ever written (BASE_SCHEMA: the
index columns with the pack's key instead of its position, plus the cycle that wrote it). Once
the base marker exists the journal starts at ``<seq>``: commits before it are no longer part of
it (even while their deletion is under way), and packs no base row or later commit names are
garbage.

The *replica snapshot* at a cycle is, for every block, the row of the newest cycle at or before
it that wrote the block (``r2b.journal.snapshot``); a block never written reads as zeros.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa

from r2b.errors import CorruptData
from r2b.ids import CheckpointId, DiskId, MachineName
from r2b.tables import read_table, write_table

FORMAT_VERSION = 1
DEFAULT_BLOCK_SIZE = 32 * 1024
DIGEST_SIZE = 32

CODEC_ZERO = 0
CODEC_RAW = 1
CODEC_ZSTD = 2

BackupType = Literal["full", "incremental"]
Consistency = Literal["crash", "filesystem", "application"]

INDEX_SCHEMA = pa.schema(
    [
        ("block", pa.uint64()),
        ("digest", pa.binary(DIGEST_SIZE)),
        ("codec", pa.uint8()),
        ("pack", pa.uint32()),
        ("offset", pa.uint64()),
        ("length", pa.uint32()),
    ],
    metadata={"format": "r2b.journal.index", "version": str(FORMAT_VERSION)},
)


BASE_SCHEMA = pa.schema(
    [
        ("block", pa.uint64()),
        ("digest", pa.binary(DIGEST_SIZE)),
        ("codec", pa.uint8()),
        ("pack_key", pa.dictionary(pa.int32(), pa.string())),
        ("offset", pa.uint64()),
        ("length", pa.uint32()),
        ("written_seq", pa.uint64()),
    ],
    metadata={"format": "r2b.journal.base", "version": str(FORMAT_VERSION)},
)


def base_prefix(machine: MachineName) -> str:
    return f"journal/{machine}/base/"


def base_marker_key(machine: MachineName, seq: int) -> str:
    return f"journal/{machine}/base/{seq:012d}.json"


def base_table_key(machine: MachineName, seq: int, disk: DiskId) -> str:
    return f"journal/{machine}/base/{seq:012d}-{disk}.arrow"


def journal_prefix(machine: MachineName) -> str:
    return f"journal/{machine}/"


def commits_prefix(machine: MachineName) -> str:
    return f"journal/{machine}/commits/"


def commit_key(machine: MachineName, seq: int) -> str:
    return f"journal/{machine}/commits/{seq:012d}.json"


def index_key(machine: MachineName, seq: int, run: str, disk: DiskId) -> str:
    return f"journal/{machine}/index/{seq:012d}-{run}-{disk}.arrow"


def pack_key(machine: MachineName, seq: int, run: str, disk: DiskId, n: int) -> str:
    return f"journal/{machine}/packs/{seq:012d}-{run}-{disk}-{n:05d}.pack"


def seq_of_commit_key(key: str) -> int:
    return int(key.rsplit("/", 1)[1].removesuffix(".json"))


@dataclass(frozen=True)
class DiskCycle:
    size: int
    block_size: int
    index: str
    packs: list[str]
    blocks_changed: int
    bytes_changed: int
    bytes_uploaded: int


@dataclass(frozen=True)
class CheckpointMark:
    id: CheckpointId
    type: BackupType
    time: str
    consistency: Consistency
    frozen_ms: float
    frozen: list[str] = field(default_factory=list)
    app_metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Commit:
    machine: MachineName
    seq: int
    run: str
    time: str
    disks: dict[DiskId, DiskCycle]
    bytes_uploaded: int
    checkpoint: CheckpointMark | None = None

    def to_json(self) -> bytes:
        doc = {"format": "r2b.journal.commit", "version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    @staticmethod
    def from_json(data: bytes, key: str) -> Commit:
        try:
            doc = json.loads(data)
            if doc.get("format") != "r2b.journal.commit":
                raise ValueError("not a journal commit")
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported version {doc.get('version')}")
            mark = doc.get("checkpoint")
            return Commit(
                machine=MachineName(doc["machine"]),
                seq=int(doc["seq"]),
                run=str(doc["run"]),
                time=str(doc["time"]),
                disks={DiskId(k): DiskCycle(**v) for k, v in doc["disks"].items()},
                bytes_uploaded=int(doc["bytes_uploaded"]),
                checkpoint=CheckpointMark(**mark) if mark else None,
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptData(f"journal commit {key} is unreadable: {e}") from e


def write_index(table: pa.Table) -> bytes:
    return write_table(table, INDEX_SCHEMA)


def read_index(data: bytes, key: str, fmt: str = "r2b.journal.index") -> pa.Table:
    return read_table(data, key, fmt, FORMAT_VERSION)


def write_base(table: pa.Table) -> bytes:
    return write_table(table, BASE_SCHEMA)
