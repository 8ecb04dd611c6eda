"""A realistic disk image for benchmarks: ext4 holding text, binaries, SQLite and free space.

Made with ``mke2fs -d`` from a tree of: generated text documents, copies of this machine's
shared libraries and programs (real ELF binaries), a SQLite database of realistic rows, and
some incompressible data — about two thirds of the filesystem used, like the disks in
PERFORMANCE.md's peer table.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path

MiB = 1 << 20


def _fill_text(folder: Path, budget: int, rng: random.Random) -> None:
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(20000)
    ]
    written, n = 0, 0
    while written < budget:
        lines = [" ".join(rng.choices(words, k=rng.randint(5, 15))) for _ in range(2000)]
        data = ("\n".join(lines) + "\n").encode()
        sub = folder / f"d{n // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{n:05d}.txt").write_bytes(data)
        written += len(data)
        n += 1


def _fill_binaries(folder: Path, budget: int) -> None:
    written = 0
    for source in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib"):
        for path in sorted(Path(source).rglob("*")):
            if written >= budget:
                return
            if path.is_file() and not path.is_symlink() and path.stat().st_size > 4096:
                target = folder / path.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                written += path.stat().st_size


def _fill_sqlite(path: Path, budget: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, item TEXT, "
            "qty INTEGER, price REAL, note TEXT)"
        )
        rows = budget // 120
        batch = [
            (
                f"customer-{rng.randint(1, 50000)}",
                f"item-{rng.randint(1, 2000)}",
                rng.randint(1, 20),
                rng.random() * 500,
                rng.choice(["", "gift", "rush", "hold"]),
            )
            for _ in range(10000)
        ]
        for _ in range(max(1, rows // len(batch))):
            db.executemany(
                "INSERT INTO orders (customer, item, qty, price, note) VALUES (?, ?, ?, ?, ?)",
                batch,
            )
        db.execute("CREATE INDEX by_customer ON orders (customer)")


def make_realistic_ext4(path: Path, size: int, seed: int = 3) -> None:
    """An ext4 image of ``size`` bytes, about 66% full of mixed real-looking content."""
    rng = random.Random(seed)
    tree = path.parent / (path.name + ".tree")
    shutil.rmtree(tree, ignore_errors=True)
    used = int(size * 0.66)
    _fill_text(tree / "home/docs", int(used * 0.30), rng)
    _fill_binaries(tree / "opt/binaries", int(used * 0.30))
    _fill_sqlite(tree / "var/lib/app/orders.db", int(used * 0.25), rng)
    (tree / "var/cache").mkdir(parents=True)
    (tree / "var/cache/blob.bin").write_bytes(os.urandom(int(used * 0.10)))
    with open(path, "wb") as f:
        f.truncate(size)
    mke2fs = shutil.which("mke2fs", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    subprocess.run(
        [mke2fs or "mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(path)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)
