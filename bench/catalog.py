"""Catalog benchmark (issue 4): indexing, find, and single-file restore against restic.

On an ext4 image holding ``--files`` files (default 120k, in 1,200 folders, 0-8 KiB each,
plus a few MiB-sized ones), in one run:

- **indexing**: files indexed per second while building the backup (the catalog's own time,
  from the manifest), and the build with and without the catalog;
- **find**: the catalog of that backup cloned into ``--backups`` backups (default 100: the
  manifest and Parquet copied under new ids, a few files changed in each), the DuckDB
  database rebuilt from the store, then ``find`` latency in-process (median of 5) for an exact
  name (its versions across all backups), a suffix glob, a folder glob and a substring, and
  ``r2b find`` end to end as a command;
- **single-file restore**: one small file, and one 4 MiB file, with ``restore_files``: seconds,
  ``bytes_fetched``, chunks; against the path a user has today with restic: restore the whole
  disk image from a restic repository, then pull the file out of it with ``debugfs``.

    .venv/bin/python -m bench.catalog [--files 120000] [--backups 100] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import MiB, restic_runner
from catalog.db import synced
from catalog.parquet import catalog_bytes, catalog_partitions, read_catalog
from r2b import ops
from r2b.image.format import Manifest, catalog_key, manifest_key
from r2b.restore.files import restore_files

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def make_tree(root: Path, files: int, seed: int = 1) -> dict[str, int]:
    """``files`` files in folders of 100; returns path → size of a few to restore later."""
    rng = random.Random(seed)
    words = b"replica snapshot catalog extent journal backup inode chunk restore ".split()
    picks: dict[str, int] = {}
    for i in range(files):
        folder = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        size = rng.choice([0, 50, 300, 1200, 4000, 8000])
        body = b" ".join(rng.choice(words) for _ in range(size // 6 + 1))[:size]
        name = f"file_{i:06d}.{rng.choice(['txt', 'conf', 'log', 'dat'])}"
        (folder / name).write_bytes(body)
        if i == files // 2:
            picks[f"/d{i // 100:04d}/{name}"] = size
    big = root / "big" / "archive.bin"
    big.parent.mkdir()
    big.write_bytes(rng.randbytes(4 * MiB))
    picks["/big/archive.bin"] = 4 * MiB
    (root / "big" / "needle.txt").write_bytes(b"the needle\n" * 200)
    picks["/big/needle.txt"] = 2200
    return picks


def make_image(root: Path, files: int) -> tuple[Path, dict[str, int], float]:
    tree = root / "tree"
    picks = make_tree(tree, files)
    image = root / "disk.img"
    size = max(1 << 30, files * 8192 + (256 << 20))
    with image.open("wb") as f:
        f.truncate(size)
    started = time.perf_counter()
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-N", str(files + 10_000), "-d", tree, image],
        check=True,
        capture_output=True,
    )
    mkfs_s = time.perf_counter() - started
    shutil.rmtree(tree)
    return image, picks, mkfs_s


def indexing(root: Path, image: Path) -> tuple[ops.Settings, Manifest, dict[str, Any]]:
    settings = ops.Settings(f"file://{root / 'store'}", root / "home")
    ops.add_machine(settings, "bench", [str(image)])
    ops.checkpoint(settings, "bench", "full")
    build_s, built = timed(lambda: ops.backup(settings, "bench"))
    manifest = built[0].manifest
    catalog = manifest.catalog or {}
    files, index_s = int(catalog["files"]), float(catalog["seconds"])
    return (
        settings,
        manifest,
        {
            "files": files,
            "index_seconds": round(index_s, 2),
            "files_per_second": round(files / index_s),
            "metadata_bytes_read": catalog["bytes_read"],
            "full_backup_seconds_with_catalog": round(build_s, 2),
            "catalog_share_of_backup": round(index_s / build_s, 2),
            "catalog_parquet_bytes": settings.open().size(catalog_key(manifest.id)),
        },
    )


def clone_backups(settings: ops.Settings, manifest: Manifest, count: int) -> None:
    """``count - 1`` more backups of the same image, each with a few files grown: the
    manifest and the catalog copied under new checkpoint ids (the find benchmark needs
    catalogs, not new images)."""
    store = settings.open()
    key = catalog_key(manifest.id)
    table = read_catalog(store.get(key), key)
    sizes = table.column("size").to_pylist()
    rng = random.Random(2)
    for n in range(manifest.seq + 1, manifest.seq + count):
        checkpoint = f"cp-{n:06d}"
        bid = f"{manifest.machine}.{checkpoint}"
        for row in rng.sample(range(len(sizes)), 50):
            sizes[row] += 1
        import pyarrow as pa

        clone = table.set_column(
            table.schema.get_field_index("size"), "size", pa.array(sizes, pa.uint64())
        )
        clone = clone.set_column(0, "backup", pa.array([bid] * len(clone), pa.string()))
        store.put(catalog_key(bid), catalog_bytes(clone, bid, catalog_partitions(table)))  # type: ignore[arg-type]
        doc = dataclasses.replace(
            manifest,
            id=bid,  # type: ignore[arg-type]
            checkpoint=checkpoint,  # type: ignore[arg-type]
            seq=n,
            catalog={**(manifest.catalog or {}), "key": catalog_key(bid)},  # type: ignore[arg-type]
        )
        store.put(manifest_key(bid), doc.to_json())  # type: ignore[arg-type]


def find_latency(settings: ops.Settings, picks: dict[str, int]) -> dict[str, Any]:
    (settings.home / "catalog.duckdb").unlink(missing_ok=True)
    store = settings.open()
    rebuild_s, _ = timed(lambda: _load_all(settings, store))
    exact = Path(next(iter(picks))).name
    queries = {
        "exact_name": exact,
        "suffix_glob": "*.conf",
        "folder_glob": "/d0042/*",
        "substring": "*needle*",
    }
    out: dict[str, Any] = {"rebuild_from_store_seconds": round(rebuild_s, 2)}
    with synced(settings.home, store) as db:
        rows = db.con.execute("SELECT count(*) FROM files").fetchone()
        out["rows"] = rows[0] if rows else 0
        for label, pattern in queries.items():
            times: list[float] = []
            found: list[dict[str, Any]] = []
            for _ in range(5):
                seconds, found = timed(lambda p=pattern: db.find(p, None, 1000))
                times.append(seconds)
            out[label] = {
                "pattern": pattern,
                "median_ms": round(statistics.median(times) * 1000, 1),
                "results": len(found),
            }
    env = {**os.environ, "R2B_HOME": str(settings.home), "R2B_STORE": settings.store_url}
    cli = [str(ROOT / ".venv" / "bin" / "r2b"), "--json", "find", exact]
    times = []
    for _ in range(3):
        seconds, proc = timed(lambda: subprocess.run(cli, env=env, capture_output=True))
        assert proc.returncode == 0, proc.stderr
        times.append(seconds)
    out["r2b_find_command_seconds"] = round(statistics.median(times), 3)
    out["r2b_find_versions"] = len(json.loads(proc.stdout))
    return out


def _load_all(settings: ops.Settings, store: Any) -> None:
    with synced(settings.home, store):
        pass


def single_file_restore(
    root: Path, settings: ops.Settings, manifest: Manifest, picks: dict[str, int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, size in picks.items():
        target = root / "restored" / path.strip("/").replace("/", "_")
        seconds, result = timed(
            lambda p=path, t=target: restore_files(settings.open(), manifest, [p], t)
        )
        out[path] = {
            "size": size,
            "seconds": round(seconds, 3),
            "bytes_fetched": result.bytes_fetched,
            "chunks_fetched": result.chunks_fetched,
            "requests": result.requests,
        }
    return out


def restic_single_file(root: Path, image: Path, picks: dict[str, int]) -> dict[str, Any]:
    """What a user does today: restic holds the disk image; restore it whole, then extract."""
    repo = root / "restic-repo"
    restic = restic_runner(root)

    restic("init")
    restic("backup", str(image))
    repo_bytes = sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())
    out: dict[str, Any] = {"repository_data_bytes": repo_bytes}
    for path in picks:
        target = root / "restic-restore"

        def restore_then_extract(p: str = path, t: Path = target) -> None:
            restic("restore", "latest", "--target", str(t))
            restored = next(t.rglob(image.name))
            subprocess.run(
                ["debugfs", "-R", f"dump {p} {root / 'restic-file'}", restored],
                check=True,
                capture_output=True,
            )

        seconds, _ = timed(restore_then_extract)
        out[path] = {"seconds": round(seconds, 2), "bytes_fetched": repo_bytes}
        shutil.rmtree(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=120_000)
    parser.add_argument("--backups", type=int, default=100)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--no-restic", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="r2b-bench-catalog-", dir=args.dir))
    try:
        image, picks, mkfs_s = make_image(root, args.files)
        result: dict[str, Any] = {
            "disk_bytes": image.stat().st_size,
            "mkfs_seconds": round(mkfs_s, 1),
        }
        settings, manifest, result["indexing"] = indexing(root, image)
        clone_backups(settings, manifest, args.backups)
        result["find"] = {"backups": args.backups, **find_latency(settings, picks)}
        result["r2b_single_file_restore"] = single_file_restore(root, settings, manifest, picks)
        if not args.no_restic:
            result["restic_restore_image_then_extract"] = restic_single_file(root, image, picks)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
