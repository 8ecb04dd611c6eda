"""A backup policy as a Prefect Block."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from r2b.image.retention import RetentionPolicy


class BackupPolicy(Block):
    """When backups are requested, how often a full one, and how long they are kept."""

    _block_type_name = "r2b Backup Policy"
    _block_type_slug = "r2b-backup-policy"

    schedule: str = Field(default="0 1 * * *", description="Cron schedule of backup requests")
    full_every: int = Field(default=7, ge=1, description="Every Nth backup is a full one")
    keep_last: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=7, ge=0)
    keep_weekly: int = Field(default=4, ge=0)
    keep_monthly: int = Field(default=12, ge=0)
    keep_failover: int = Field(default=3, ge=0, description="Checkpoints kept for failover")
    # zstd level 1 is the measured sweet spot (PERFORMANCE.md); the only codec for now
    compression: Literal["zstd-1"] = Field(default="zstd-1", description="Chunk compression")

    def retention(self) -> RetentionPolicy:
        return RetentionPolicy(self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)
