"""Backup benchmark (issue 3): images built from the replica, against the ceiling and restic.

On a realistic ext4 image (text, binaries, SQLite, free space), in one run:
- the full-image build throughput against this machine's read + hash + compress ceiling;
- incremental cost at 1% and 10% scattered change (4 KiB writes), as a fraction of the full;
- whole-disk restore throughput;
- restic (the peer a user would pick) on the same image: first backup, second backup after
  the same 1% change, stored bytes, restore — side by side.

    .venv/bin/python -m bench.backup [--size-gib 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import zstandard

from bench.common import GiB, MiB, restic_runner, scatter_change
from bench.realistic import make_realistic_ext4
from r2b import ops


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def ceiling(path: Path, threads: int = 2) -> float:
    """Seconds to pread + BLAKE3 + zstd-1 the whole image in 4 MiB pieces on 2 threads."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)

    def work(offset: int) -> int:
        data = os.pread(fd, 4 * MiB, offset)
        blake3.blake3(data).digest()
        return len(zstandard.ZstdCompressor(level=1).compress(data))

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            sum(pool.map(work, range(0, size, 4 * MiB)))
        return time.perf_counter() - started
    finally:
        os.close(fd)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def r2b_side(root: Path, disk: Path) -> dict[str, Any]:
    settings = ops.Settings(f"file://{root / 'store'}", root / "home")
    ops.add_machine(settings, "bench", [str(disk)])
    size = disk.stat().st_size
    out: dict[str, Any] = {}
    repl_s, first = timed(lambda: ops.checkpoint(settings, "bench", "full"))
    out["first_replication"] = {"seconds": round(repl_s, 2), "wan_bytes": first.bytes_uploaded}
    full_s, built = timed(lambda: ops.backup(settings, "bench")[0].manifest)
    image = built.disks["disk0"]
    out["full"] = {
        "seconds": round(full_s, 2),
        "GB_per_s": round(size / full_s / 1e9, 2),
        "bytes_read": image.bytes_read,
        "bytes_stored": image.bytes_stored,
    }
    for pct in (1, 10):
        changed = scatter_change(disk, pct / 100, seed=pct)
        ck_s, mark = timed(lambda: ops.checkpoint(settings, "bench", "incremental"))
        inc_s, inc = timed(lambda: ops.backup(settings, "bench")[0].manifest)
        inc_image = inc.disks["disk0"]
        out[f"incremental_{pct}pct"] = {
            "bytes_changed": changed,
            "checkpoint_seconds": round(ck_s, 2),
            "wan_bytes": mark.bytes_uploaded,
            "build_seconds": round(inc_s, 2),
            "bytes_read": inc_image.bytes_read,
            "bytes_stored": inc_image.bytes_stored,
            "time_vs_full": round(inc_s / full_s, 3),
            "read_vs_full": round(inc_image.bytes_read / image.bytes_read, 3),
        }
        if pct == 1:
            restore_s, _ = timed(
                lambda ref=inc.id: ops.restore_disk(settings, ref, root / "r2b-restore.img")
            )
            out["restore"] = {
                "seconds": round(restore_s, 2),
                "GB_per_s": round(size / restore_s / 1e9, 2),
            }
            (root / "r2b-restore.img").unlink()
    out["store_bytes"] = du(root / "store")
    return out


def restic_side(root: Path, disk: Path, change_seed: int) -> dict[str, Any]:
    repo = root / "restic-repo"
    restic = restic_runner(root)

    restic("init")
    out: dict[str, Any] = {}
    first_s, _ = timed(lambda: restic("backup", str(disk)))
    out["first_backup"] = {"seconds": round(first_s, 2), "stored_bytes": du(repo)}
    before = du(repo)
    changed = scatter_change(disk, 0.01, seed=change_seed)
    second_s, _ = timed(lambda: restic("backup", str(disk)))
    out["second_backup_1pct"] = {
        "seconds": round(second_s, 2),
        "stored_bytes": du(repo) - before,
        "bytes_changed": changed,
    }
    target = root / "restic-restore"
    restore_s, _ = timed(lambda: restic("restore", "latest", "--target", str(target)))
    out["restore"] = {"seconds": round(restore_s, 2)}
    shutil.rmtree(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="r2b-bench-backup-", dir=args.dir))
    try:
        size = int(args.size_gib * GiB)
        pristine = root / "pristine.img"
        make_realistic_ext4(pristine, size)
        disk = root / "disk.img"
        shutil.copyfile(pristine, disk)
        os.sync()
        ceiling_s = min(ceiling(disk) for _ in range(3))
        result: dict[str, Any] = {
            "disk_bytes": size,
            "ceiling_read_hash_compress_GB_per_s": round(size / ceiling_s / 1e9, 2),
        }
        result["r2b"] = r2b_side(root, disk)
        result["r2b"]["full_vs_ceiling"] = round(
            result["r2b"]["full"]["GB_per_s"] / result["ceiling_read_hash_compress_GB_per_s"], 2
        )
        shutil.copyfile(pristine, disk)  # restic starts from the same image, same 1% change
        os.sync()
        result["restic"] = restic_side(root, disk, change_seed=1)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
