"""Distinct id types per layer, so a checkpoint id is never passed where a backup id is due.

They are ``NewType``s over ``str``/``int``: free at run time, checked by mypy.
"""

from __future__ import annotations

import re
from typing import NewType

from r2b.errors import BadInput

MachineName = NewType("MachineName", str)
DiskId = NewType("DiskId", str)
CheckpointId = NewType("CheckpointId", str)
BackupId = NewType("BackupId", str)
ChunkDigest = NewType("ChunkDigest", str)
CycleSeq = NewType("CycleSeq", int)

# Names become parts of object keys and file names: keep them to a safe alphabet.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def machine_name(text: str) -> MachineName:
    if not _NAME.match(text):
        raise BadInput(f"invalid machine name {text!r}: use 1-63 letters, digits, '.', '_' or '-'")
    return MachineName(text)


def disk_id(text: str) -> DiskId:
    if not _NAME.match(text):
        raise BadInput(f"invalid disk id {text!r}: use 1-63 letters, digits, '.', '_' or '-'")
    return DiskId(text)


def checkpoint_id(seq: int) -> CheckpointId:
    """A checkpoint is named after the journal cycle that marks it: ``cp-000042``."""
    return CheckpointId(f"cp-{seq:06d}")


def checkpoint_seq(checkpoint: str) -> int:
    """The journal cycle a checkpoint id names; ``BadInput`` when it is not a checkpoint id."""
    match = re.fullmatch(r"cp-(\d{6,})", checkpoint)
    if not match:
        raise BadInput(f"invalid checkpoint id {checkpoint!r}: expected cp-NNNNNN")
    return int(match.group(1))
