"""How big should a tracking block be? (issue 2: choose it by measurement)

For each candidate size, on the same image in the same run: BLAKE3 throughput over slices of
that size (one thread, from memory), the replicator's no-change scan throughput, its map size,
and the bytes a 1% scattered change (random 4 KiB writes) uploads.

    .venv/bin/python -m bench.blocksize [--size-gib 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import blake3

from bench.common import GiB, MiB, make_mixed_image, median_time, scatter_change
from r2b import ops

SIZES = [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20]


def hash_rate(block_size: int) -> float:
    data = memoryview(os.urandom(64 * MiB))

    def run() -> None:
        for i in range(0, len(data), block_size):
            blake3.blake3(data[i : i + block_size]).digest()

    return len(data) / median_time(run, 5) / 1e9


def scan_and_change(root: Path, image: Path, block_size: int) -> dict[str, float]:
    work = root / f"bs{block_size}"
    disk = work / "disk.img"
    work.mkdir()
    shutil.copyfile(image, disk)
    settings = ops.Settings(f"file://{work / 'store'}", work / "home")
    ops.add_machine(settings, "b", [str(disk)], block_size=block_size)
    ops.replicate(settings, "b")
    size = disk.stat().st_size
    nochange = median_time(lambda: ops.replicate(settings, "b"), 3)
    changed = scatter_change(disk, 0.01, seed=42)
    started = time.perf_counter()
    cycle = ops.replicate(settings, "b")
    return {
        "nochange_scan_GB_per_s": round(size / nochange / 1e9, 2),
        "map_MiB_per_GiB": round(GiB / block_size * 32 / MiB, 2),
        "upload_per_changed_byte_1pct": round(cycle.bytes_uploaded / changed, 2),
        "change_cycle_s": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--dir", default=None, help="folder for the images")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="r2b-blocksize-", dir=args.dir))
    try:
        image = root / "image.img"
        make_mixed_image(image, int(args.size_gib * GiB))
        os.sync()
        rows = {}
        for size in SIZES:
            row = {"blake3_GB_per_s": round(hash_rate(size), 2)}
            row.update(scan_and_change(root, image, size))
            rows[f"{size >> 10} KiB"] = row
            shutil.rmtree(root / f"bs{size}")
        print(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
