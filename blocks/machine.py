"""A protected machine as a Prefect Block."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from r2b import ops
from r2b.journal.format import DEFAULT_BLOCK_SIZE
from r2b.machines import MachineSpec


class ProtectedMachine(Block):
    """A machine r2b protects: its disks and the applications to quiesce."""

    _block_type_name = "r2b Protected Machine"
    _block_type_slug = "r2b-protected-machine"

    name: str = Field(description="Machine name (letters, digits, '.', '_', '-')")
    disks: list[str] = Field(description="Raw image files or block devices")
    apps: list[str] = Field(default_factory=list, description="postgres:…, sqlite:PATH, …")
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, description="Tracking block (bytes)")

    def register(self, settings: ops.Settings) -> MachineSpec:
        return ops.add_machine(settings, self.name, self.disks, self.apps, self.block_size)
