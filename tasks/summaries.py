"""What tasks return: small pydantic summaries (ids, counts, keys), never bulk data."""

from __future__ import annotations

from pydantic import BaseModel

from r2b.journal.failover import Materialised
from r2b.journal.replicator import CycleResult
from r2b.machines import MachineSpec


class MachineSummary(BaseModel):
    name: str
    disks: list[str]
    apps: list[str]

    @staticmethod
    def of(spec: MachineSpec) -> MachineSummary:
        return MachineSummary(name=spec.name, disks=[d.path for d in spec.disks], apps=spec.apps)


class CycleSummary(BaseModel):
    machine: str
    seq: int
    blocks_changed: int
    bytes_changed: int
    bytes_uploaded: int
    checkpoint: str | None = None
    frozen_ms: float | None = None
    frozen: list[str] = []

    @staticmethod
    def of(result: CycleResult) -> CycleSummary:
        return CycleSummary(
            machine=result.machine,
            seq=result.seq,
            blocks_changed=result.blocks_changed,
            bytes_changed=result.bytes_changed,
            bytes_uploaded=result.bytes_uploaded,
            checkpoint=result.checkpoint,
            frozen_ms=result.frozen_ms,
            frozen=result.frozen,
        )


class DiskImage(BaseModel):
    path: str
    sha256: str
    bytes_written: int

    @staticmethod
    def of(result: Materialised) -> DiskImage:
        return DiskImage(
            path=str(result.path), sha256=result.sha256, bytes_written=result.bytes_written
        )
