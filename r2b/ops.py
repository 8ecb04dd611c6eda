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
from typing import Any

from r2b.apps.agent import AppPlan, DiskMount, application_freeze, metadata_location
from r2b.clock import Clock, utc_now
from r2b.errors import BadInput, NotFound
from r2b.extents import Extent
from r2b.ids import CheckpointId, DiskId
from r2b.ids import checkpoint_id as checkpoint_id_of
from r2b.image.backups import list_backups, load_backup
from r2b.image.build import BuildResult, build_backup
from r2b.image.format import Manifest
from r2b.image.prune import PruneResult, RetentionPolicy
from r2b.image.prune import prune as image_prune
from r2b.image.restore import VerifyReport, verify_backups
from r2b.image.restore import restore_disk as image_restore_disk
from r2b.journal.failover import Materialised, materialise
from r2b.journal.format import DEFAULT_BLOCK_SIZE, BackupType
from r2b.journal.replicator import CheckpointRequest, CycleResult, Freezer, Replicator
from r2b.journal.snapshot import Journal
from r2b.machines import DiskSpec, MachineSpec, list_machines, load_machine, register_machine
from r2b.policy import next_backup_type
from r2b.progress import progress
from r2b.quiesce import DEFAULT_MAX_FREEZE_S, FrozenWindow, disk_mounts
from r2b.restore.files import FileRestoreResult
from r2b.restore.items import ItemRestoreResult
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
    settings: Settings,
    name: str,
    disks: Sequence[str],
    apps: Sequence[str] = (),
    block_size: int = DEFAULT_BLOCK_SIZE,
    hooks: dict[str, str] | None = None,
) -> MachineSpec:
    return register_machine(settings.open(), name, list(disks), list(apps), block_size, hooks=hooks)


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
    """Request a backup: replicate, then quiesce applications and freeze the disks' mounted
    filesystems, capture, thaw, and mark the checkpoint (``r2b.apps.agent``).

    A first cycle without a freeze brings the replica close to the disk, so the frozen cycle
    only reads the disk and captures the last few changes; upload happens after the thaw.
    Without applications or a mounted filesystem the checkpoint is crash-consistent, and its
    mark says so.
    """
    store = CountingStore(settings.open())
    spec = load_machine(store, name)
    replicator = Replicator(store, spec, settings.state_dir, clock)
    with progress(f"replicating {name}", _scanned_bytes(spec, None)) as advance:
        catch_up = replicator.cycle(progress=advance)
    plan = AppPlan.of(spec.apps, spec.hooks)
    mounts = [DiskMount(d.id, m) for d in spec.disks for m in disk_mounts(d.path)] if freeze else []
    request = CheckpointRequest(backup_type)
    freezer: Freezer | None = None
    if mounts or plan.declared:
        hint = checkpoint_id_of(catch_up.seq + 1)
        request = CheckpointRequest(
            backup_type,
            "application" if plan.apps else "filesystem" if mounts else "crash",
            {"file": metadata_location(mounts), "apps": [str(a) for a in plan.apps]}
            if plan.apps
            else None,
        )

        def freezer() -> contextlib.AbstractContextManager[FrozenWindow]:
            return application_freeze(plan, mounts, hint, max_freeze_s, clock)

    result = replicator.cycle(checkpoint=request, freeze=freezer)
    return dataclasses.replace(
        result, bytes_uploaded=result.bytes_uploaded + catch_up.bytes_uploaded
    )


def auto_backup_type(settings: Settings, name: str, full_every: int) -> BackupType:
    """The type a policy with ``full_every`` asks for, from the machine's checkpoint history."""
    store = settings.open()
    spec = load_machine(store, name)
    history = [c.checkpoint.type for c in Journal(store, spec.name).checkpoints() if c.checkpoint]
    return next_backup_type(history, full_every)


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
    try:
        for disk in spec.disks:
            results.append(_failover_disk(store, journal, disk, seq, to_dir))
    except BaseException:
        # all disks or none: a machine half failed over is not a machine
        for done in results:
            done.path.unlink(missing_ok=True)
        raise
    return results


def _failover_disk(
    store: ObjectStore, journal: Journal, disk: DiskSpec, seq: int, to_dir: Path
) -> Materialised:
    bmap = journal.block_map(disk.id, disk.size, disk.block_size, seq)
    stored_bytes = int((bmap.codec != 0).sum()) * disk.block_size
    with progress(f"materialising {disk.id}", stored_bytes) as advance:
        return materialise(store, bmap, to_dir / f"{disk.id}.img", progress=advance)


def backup(
    settings: Settings,
    name: str,
    checkpoint_id: str | None = None,
    wait_s: float = 0.0,
    clock: Clock = utc_now,
) -> list[BuildResult]:
    """Build backup images from the replica: at ``checkpoint_id``, or at every checkpoint that
    has no backup yet (oldest first)."""
    store = settings.open()
    spec = load_machine(store, name)
    if checkpoint_id is not None:
        wanted = [CheckpointId(checkpoint_id)]
    else:
        done = {m.checkpoint for m in list_backups(store, spec.name)}
        marks = [c.checkpoint for c in Journal(store, spec.name).checkpoints() if c.checkpoint]
        wanted = [m.id for m in marks if m.id not in done]
    results = []
    for checkpoint_ in wanted:
        total = sum(d.size for d in spec.disks)
        with progress(f"backing up {name} at {checkpoint_}", total) as advance:
            results.append(build_backup(store, spec, checkpoint_, wait_s, clock, advance))
        if results[-1].built:
            _load_catalog(settings, store, results[-1].manifest)
    return results


def _load_catalog(settings: Settings, store: ObjectStore, manifest: Manifest) -> None:
    """Register a new backup's catalog with this backup server's DuckDB (best effort: a busy
    database catches up from the store on the next ``ls``/``find``)."""
    from catalog.db import load_into_catalog

    load_into_catalog(settings.home, store, manifest)


def backups(settings: Settings, name: str | None = None) -> list[Manifest]:
    return list_backups(settings.open(), name)


def restore_disk(
    settings: Settings, backup_ref: str, to: Path, disk: str | None = None
) -> Materialised:
    store = settings.open()
    manifest = load_backup(store, backup_ref)
    spec = load_machine(store, manifest.machine)
    target = spec.disk(disk)
    if target.id not in manifest.disks:
        raise NotFound(f"{manifest.id}/{target.id}", "disk image")
    if to.exists() and not to.is_file():
        raise BadInput(f"{to} exists and is not a regular file")
    if to.exists():
        raise BadInput(f"{to} exists: remove it or choose another path")
    with progress(f"restoring {manifest.id}/{target.id}", target.size) as advance:
        return image_restore_disk(store, manifest, target.id, to, advance)


def verify(settings: Settings, backup_refs: Sequence[str] = ()) -> VerifyReport:
    store = settings.open()
    manifests = [load_backup(store, r) for r in backup_refs] or list_backups(store)
    return verify_backups(store, manifests)


def prune(
    settings: Settings, policy: RetentionPolicy, keep_failover: int = 3, clock: Clock = utc_now
) -> PruneResult:
    return image_prune(settings.open(), policy, keep_failover, clock)


# --- the catalog: browse, search, restore files and application items ---------------------------


def ls(settings: Settings, backup_ref: str, path: str = "/") -> list[dict[str, Any]]:
    """The entries of folder ``path`` in a backup (or the entry itself), from the catalog."""
    from catalog.db import synced

    store = settings.open()
    manifest = load_backup(store, backup_ref)
    with synced(settings.home, store, {manifest.id}) as db:
        return db.ls(manifest.id, path)


def find(
    settings: Settings, pattern: str, machine: str | None = None, limit: int = 10_000
) -> list[dict[str, Any]]:
    """Every version of every entry, and every copy of every application item, matching
    ``pattern`` across all backups (all machines, or ``machine``'s), from the catalog."""
    from catalog.db import synced

    with synced(settings.home, settings.open()) as db:
        return db.find(pattern, machine, limit)


def restore_items(
    settings: Settings, backup_ref: str, items: Sequence[str], to: Path, overwrite: bool = False
) -> ItemRestoreResult:
    """Restore application items (a mail message, a table) of a backup into folder ``to``."""
    from r2b.restore.items import restore_items as items_restore

    store = settings.open()
    manifest = load_backup(store, backup_ref)
    return items_restore(store, manifest, items, to, overwrite)


def restore_files(
    settings: Settings, backup_ref: str, paths: Sequence[str], to: Path, overwrite: bool = False
) -> FileRestoreResult:
    """Restore files and folders (globs allowed) of a backup into folder ``to``."""
    from r2b.restore.files import restore_files as files_restore

    store = settings.open()
    manifest = load_backup(store, backup_ref)
    return files_restore(store, manifest, paths, to, overwrite)
