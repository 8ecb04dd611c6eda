"""Replication flows: one cycle, continuous replication, the checkpoint (request backup)."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow

from flows.runtime import call, emit
from r2b.journal.format import BackupType
from r2b.ops import Settings
from tasks.replication import choose_backup_type, mark_checkpoint, replicate_cycle
from tasks.summaries import CycleSummary


@flow(name="replicate")
def replicate_flow(
    machine: str,
    store: str | None = None,
    watch_seconds: float | None = None,
    cycles: int | None = None,
    changed_extents: dict[str, list[tuple[int, int]]] | None = None,
) -> list[CycleSummary]:
    """One replication cycle, or one every ``watch_seconds`` (``cycles`` times, or forever).

    ``changed_extents`` ({disk: [(offset, length), ...]}, from a hypervisor's change
    tracking) narrows the first cycle to those byte ranges; later ones scan the disks.
    """
    settings = Settings.from_env(store)
    results = [call(replicate_cycle, settings, machine, changed_extents)]
    while watch_seconds is not None and (cycles is None or len(results) < cycles):
        time.sleep(watch_seconds)
        results.append(call(replicate_cycle, settings, machine))
    return results


@flow(name="request-backup")
def checkpoint_flow(
    machine: str,
    backup_type: Literal["full", "incremental", "auto"] = "incremental",
    store: str | None = None,
    full_every: int = 7,
    policy: str | None = None,
) -> CycleSummary:
    """Quiesce, replicate, mark a checkpoint, thaw; then announce it for the backup proxy.

    ``auto`` asks for a full backup every ``full_every`` checkpoints (or the saved
    ``BackupPolicy`` block named ``policy`` says how often).
    """
    settings = Settings.from_env(store)
    kind: BackupType
    if backup_type == "auto":
        if policy is not None:
            from blocks.policy import BackupPolicy

            full_every = BackupPolicy.load(policy, _sync=True).full_every  # type: ignore[call-arg,union-attr]
        kind = call(choose_backup_type, settings, machine, full_every)
    else:
        kind = backup_type
    result = call(mark_checkpoint, settings, machine, kind)
    emit(
        "r2b.checkpoint.synced",
        f"r2b.machine.{machine}",
        {
            "machine": machine,
            "checkpoint": result.checkpoint,
            "type": kind,
            "store": settings.store_url,
        },
    )
    return result
