"""The operations r2b offers, as plain functions over the core: what tasks and the CLI call.

Each function takes ``Settings`` (where the store and the local state are) and returns small
dataclasses. Nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from r2b.clock import Clock, utc_now
from r2b.errors import BadInput, NotFound
from r2b.extents import Extent
from r2b.ids import DiskId
from r2b.journal.failover import Materialised, materialise
from r2b.journal.format import BackupType
from r2b.journal.replicator import CheckpointRequest, CycleResult, Freezer, Replicator
from r2b.journal.snapshot import Journal
from r2b.machines import MachineSpec, list_machines, load_machine, register_machine
from r2b.progress import progress
from r2b.quiesce import DEFAULT_MAX_FREEZE_S, freeze_filesystems, mounts_of_disk
from r2b.store import CountingStore, ObjectStore, open_store

HOME_ENV = "R2B_HOME"
STORE_ENV = "R2B_STORE"


@dataclass(frozen=True)
class Settings:
    """Where r2b keeps things: the object store, and the local state of this host."""

    store_url: str
    home: Path

    @staticmethod
    def from_env(store_url: str | None = None) -> Settings:
        home = Path(os.environ.get(HOME_ENV) or Path.home() / ".r2b").absolute()
        url = store_url or os.environ.get(STORE_ENV) or f"file://{home / 'store'}"
        return Settings(url, home)

    def open(self) -> ObjectStore:
        return open_store(self.store_url)

    @property
    def state_dir(self) -> Path:
        return self.home / "state"


def add_machine(
    settings: Settings, name: str, disks: Sequence[str], apps: Sequence[str] = ()
) -> MachineSpec:
    return register_machine(settings.open(), name, list(disks), list(apps))


def machines(settings: Settings) -> list[MachineSpec]:
    return list_machines(settings.open())


def replicate(
    settings: Settings,
    name: str,
    changed_extents: Mapping[DiskId, Sequence[Extent]] | None = None,
    clock: Clock = utc_now,
) -> CycleResult:
    """One replication cycle of machine ``name``: what changed since the last one."""
    store = CountingStore(settings.open())
    spec = load_machine(store, name)
    with progress(f"replicating {name}", _scanned_bytes(spec, changed_extents)) as advance:
        return Replicator(store, spec, settings.state_dir, clock).cycle(
            changed_extents, progress=advance
        )


def _scanned_bytes(
    spec: MachineSpec, changed_extents: Mapping[DiskId, Sequence[Extent]] | None
) -> int | None:
    return sum(d.size for d in spec.disks) if changed_extents is None else None


def checkpoint(
    settings: Settings,
    name: str,
    backup_type: BackupType = "incremental",
    freeze: bool = True,
    max_freeze_s: float = DEFAULT_MAX_FREEZE_S,
    clock: Clock = utc_now,
) -> CycleResult:
    """Request a backup: replicate, freeze the disks' mounted filesystems, capture, thaw, mark.

    A first cycle without a freeze brings the replica close to the disk, so the frozen cycle
    only reads the disk and captures the last few changes; upload happens after the thaw.
    """
    store = CountingStore(settings.open())
    spec = load_machine(store, name)
    replicator = Replicator(store, spec, settings.state_dir, clock)
    with progress(f"replicating {name}", _scanned_bytes(spec, None)) as advance:
        catch_up = replicator.cycle(progress=advance)
    mounts = [m for d in spec.disks for m in mounts_of_disk(d.path)] if freeze else []
    freezer: Freezer | None = None
    if mounts:

        def freezer() -> contextlib.AbstractContextManager[list[str]]:
            return freeze_filesystems(mounts, max_freeze_s)

    result = replicator.cycle(checkpoint=CheckpointRequest(backup_type), freeze=freezer)
    return dataclasses.replace(
        result, bytes_uploaded=result.bytes_uploaded + catch_up.bytes_uploaded
    )


def failover(
    settings: Settings,
    name: str,
    to_dir: Path,
    checkpoint_id: str | None = None,
) -> list[Materialised]:
    """Materialise each disk of the replica (latest, or at a checkpoint) as ``DIR/<disk>.img``."""
    store = settings.open()
    spec = load_machine(store, name)
    journal = Journal(store, spec.name)
    if checkpoint_id is not None:
        seq = journal.checkpoint(checkpoint_id).seq
    else:
        latest = journal.latest()
        if latest is None:
            raise NotFound(f"{name}: nothing replicated yet", "replica")
        seq = latest.seq
    if to_dir.exists() and not to_dir.is_dir():
        raise BadInput(f"{to_dir} exists and is not a directory")
    to_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for disk in spec.disks:
        out = to_dir / f"{disk.id}.img"
        if out.exists():
            raise BadInput(f"{out} exists: choose an empty folder or remove it first")
    for disk in spec.disks:
        bmap = journal.block_map(disk.id, disk.size, disk.block_size, seq)
        with progress(
            f"materialising {disk.id}", int((bmap.codec != 0).sum()) * disk.block_size
        ) as advance:
            results.append(materialise(store, bmap, to_dir / f"{disk.id}.img", progress=advance))
    return results
