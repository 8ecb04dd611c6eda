"""Shared helpers for the benchmarks: sample images, timing, ceilings."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3

MiB = 1 << 20
GiB = 1 << 30


def median_time(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def make_mixed_image(path: Path, size: int, seed: int = 1) -> None:
    """A disk-like image: text, random, repetitive binary and zero bands of 4 MiB, in turn."""
    rng = random.Random(seed)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(5000)
    ]
    text = b" ".join(rng.choice(words) for _ in range(900_000))[: 4 * MiB]
    binary = (bytes(range(256)) * 64 + os.urandom(4096)) * 256
    with open(path, "wb") as f:
        f.truncate(size)
        for band, offset in enumerate(range(0, size, 4 * MiB)):
            content = (text, None, binary[: 4 * MiB], b"")[band % 4]
            f.seek(offset)
            f.write(os.urandom(4 * MiB) if content is None else content)


def scatter_change(path: Path, fraction: float, seed: int, granule: int = 4096) -> int:
    """Overwrite ``fraction`` of the image with random bytes at random 4 KiB-aligned places."""
    size = path.stat().st_size
    rng = random.Random(seed)
    count = int(size * fraction) // granule
    with open(path, "r+b") as f:
        for _ in range(count):
            f.seek(rng.randrange(size // granule) * granule)
            f.write(os.urandom(granule))
    return count * granule


def read_hash_ceiling(path: Path, threads: int = 2, chunk: int = 4 * MiB) -> float:
    """Seconds to pread + BLAKE3 the whole file in 4 MiB pieces on ``threads`` threads."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)

    def work(offset: int) -> bytes:
        return blake3.blake3(os.pread(fd, chunk, offset)).digest()

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(work, range(0, size, chunk)):
                pass
        return time.perf_counter() - started
    finally:
        os.close(fd)


def restic_runner(root: Path) -> Callable[..., None]:
    """A function running restic on a fresh repository under ``root`` (the peer tool)."""
    import subprocess

    env = {
        **os.environ,
        "RESTIC_PASSWORD": "bench",
        "RESTIC_REPOSITORY": str(root / "restic-repo"),
        "RESTIC_CACHE_DIR": str(root / "restic-cache"),
    }

    def restic(*args: str) -> None:
        subprocess.run(["restic", "--quiet", *args], env=env, check=True, capture_output=True)

    return restic
