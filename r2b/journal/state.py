"""The replicator's local memory of the last cycle: block digests per disk.

Change detection compares each block's digest with the last committed cycle's. Keeping those
digests on the on-prem side saves reading the journal back over the WAN every cycle. The cache
is only a shortcut: it names the commit (seq and run) it matches, and when that is not the
journal's latest commit (a crash after commit, another replicator, a lost cache) the digests are
rebuilt from the journal itself. It is written after the commit, atomically (rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from r2b.ids import DiskId, MachineName
from r2b.journal.format import DIGEST_SIZE


class DigestCache:
    def __init__(self, root: Path, store_url: str) -> None:
        # One folder per store, so two stores never share a cache.
        import hashlib

        self.root = root / hashlib.sha256(store_url.encode()).hexdigest()[:16]

    def _paths(self, machine: MachineName, disk: DiskId) -> tuple[Path, Path]:
        base = self.root / machine
        return base / f"{disk}.digests", base / f"{disk}.json"

    def load(
        self, machine: MachineName, disk: DiskId, seq: int, run: str, blocks: int
    ) -> npt.NDArray[np.uint8] | None:
        data_path, meta_path = self._paths(machine, disk)
        try:
            meta = json.loads(meta_path.read_text())
            if meta != {"seq": seq, "run": run, "blocks": blocks}:
                return None
            raw = data_path.read_bytes()
        except (OSError, ValueError):
            return None
        if len(raw) != blocks * DIGEST_SIZE:
            return None
        return np.frombuffer(raw, dtype=np.uint8).reshape(blocks, DIGEST_SIZE).copy()

    def save(
        self,
        machine: MachineName,
        disk: DiskId,
        seq: int,
        run: str,
        digests: npt.NDArray[np.uint8],
    ) -> None:
        data_path, meta_path = self._paths(machine, disk)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        # Invalidate first, so a crash between the two renames never pairs new meta with old data.
        meta_path.unlink(missing_ok=True)
        _atomic_write(data_path, digests.tobytes())
        meta = {"seq": seq, "run": run, "blocks": len(digests)}
        _atomic_write(meta_path, json.dumps(meta).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
