"""Failover: materialise the replica's disks at the latest cycle or at a checkpoint."""

from __future__ import annotations

from prefect import flow

from flows.runtime import call
from r2b.ops import Settings
from tasks.replication import failover_disks
from tasks.summaries import DiskImage


@flow(name="failover")
def failover_flow(
    machine: str, to_dir: str, checkpoint: str | None = None, store: str | None = None
) -> list[DiskImage]:
    return call(failover_disks, Settings.from_env(store), machine, to_dir, checkpoint)
