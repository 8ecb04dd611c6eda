"""Backup policy arithmetic: which type the next requested backup is (full every N)."""

from __future__ import annotations

from collections.abc import Sequence

from r2b.journal.format import BackupType


def next_backup_type(previous: Sequence[BackupType], full_every: int) -> BackupType:
    """``full`` when there was no full one yet, or when the last ``full_every - 1`` checkpoints
    since the last full were incremental; else ``incremental``."""
    if full_every < 1:
        raise ValueError("full_every must be at least 1")
    for since_full, kind in enumerate(reversed(previous)):
        if kind == "full":
            return "full" if since_full >= full_every - 1 else "incremental"
    return "full"
