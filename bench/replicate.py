"""Replication benchmark (issue 2).

On a multi-GiB image in the page cache: the scan throughput of a no-change cycle against the
plain read + BLAKE3 ceiling of the same file measured in the same run (the ratio is the figure),
and bytes uploaded against bytes changed for 1% and 10% scattered random change.

    .venv/bin/python bench/replicate.py [--size-gib 4] [--runs 3] [--dir /var/tmp/r2b-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import GiB, make_mixed_image, median_time, read_hash_ceiling, scatter_change
from r2b import ops
from r2b.journal.format import DEFAULT_BLOCK_SIZE
from r2b.ops import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="r2b-bench-", dir=args.dir))
    try:
        print(json.dumps(run(root, int(args.size_gib * GiB), args.runs), indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, size: int, runs: int) -> dict[str, object]:
    disk = root / "disk.img"
    make_mixed_image(disk, size)
    os.sync()  # the image's own dirty pages are not the replicator's to flush
    settings = Settings(f"file://{root / 'store'}", root / "home")
    ops.add_machine(settings, "bench", [str(disk)])
    started = time.perf_counter()
    first = ops.replicate(settings, "bench")
    first_s = time.perf_counter() - started
    read_hash_ceiling(disk)  # warm the page cache
    ceiling_s = median_time(lambda: read_hash_ceiling(disk), runs)
    nochange_s = median_time(lambda: ops.replicate(settings, "bench"), runs)
    result: dict[str, object] = {
        "disk_bytes": size,
        "first_cycle": {
            "seconds": round(first_s, 2),
            "bytes_uploaded": first.bytes_uploaded,
            "GB_per_s": round(size / first_s / 1e9, 2),
        },
        "read_hash_ceiling_GB_per_s": round(size / ceiling_s / 1e9, 2),
        "nochange_cycle_GB_per_s": round(size / nochange_s / 1e9, 2),
        "nochange_vs_ceiling": round(ceiling_s / nochange_s, 2),
    }
    for fraction in (0.01, 0.10):
        changed = scatter_change(disk, fraction, seed=int(fraction * 1000))
        started = time.perf_counter()
        cycle = ops.replicate(settings, "bench")
        seconds = time.perf_counter() - started
        result[f"change_{int(fraction * 100)}pct"] = {
            "bytes_changed_by_writer": changed,
            "blocks_changed": cycle.blocks_changed,
            "bytes_in_changed_blocks": cycle.bytes_changed,
            "bytes_uploaded": cycle.bytes_uploaded,
            "uploaded_per_changed_byte": round(cycle.bytes_uploaded / changed, 2),
            "seconds": round(seconds, 2),
        }
    result["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["note"] = f"random 4 KiB writes; tracking block {DEFAULT_BLOCK_SIZE // 1024} KiB"
    return result


if __name__ == "__main__":
    main()
