"""Freeze-window benchmark (issue 5): how long applications are frozen, what a checkpoint costs.

For each application — ``none`` (the filesystem only; a writer appends 4 KiB and fsyncs),
``sqlite`` (WAL mode; a writer commits one row per transaction) and ``postgres`` (a real
PostgreSQL 15; one connection commits one row per transaction) — an ext4 disk image of
``--size-mib`` is loop-mounted, ``--fill`` of it written with incompressible data, the
application put on it and its load started; then a full checkpoint and ``--checkpoints``
incremental ones, each measured:

- ``frozen_ms``: the freeze r2b reports (``fsfreeze -f`` to ``fsfreeze -u``);
- ``checkpoint_s``: ``ops.checkpoint`` end to end (catch-up cycle, quiesce, frozen capture,
  thaw, upload, commit);
- ``stall_ms``: the longest write of the load that overlapped the checkpoint: what the
  application felt (the freeze, plus any time it was held before or after it).

Prints one JSON document: per application the median and max of each, and the load's rate.
Needs root (loop mounts, fsfreeze) and, for ``postgres``, the server binaries (R2B_PG_BIN).

    sudo .venv/bin/python -m bench.freeze [--size-mib 512] [--checkpoints 10] \\
        [--apps none,sqlite,postgres] [--fill 0.4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from r2b import ops
from tests import pg
from tests.disks import loop_mount, make_ext4_image

MiB = 1 << 20


class Load:
    """Runs ``step`` in a thread until stopped, recording (sent, returned) of each call."""

    def __init__(self, step: Callable[[int], None], close: Callable[[], None]) -> None:
        self.step = step
        self.close = close
        self.writes: list[tuple[float, float]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            n = 1
            while not self._stop.is_set():
                sent = time.monotonic()
                self.step(n)
                self.writes.append((sent, time.monotonic()))
                n += 1
        except BaseException as e:
            self.error = e
        finally:
            self.close()

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def stall_between(self, start: float, end: float) -> float:
        """The longest write that overlapped [start, end], in seconds."""
        return max(
            (r - s for s, r in self.writes if r >= start and s <= end),
            default=0.0,
        )


def file_load(mnt: Path) -> Load:
    fd = os.open(mnt / "load.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = os.urandom(4096)

    def step(_: int) -> None:
        os.write(fd, block)
        os.fsync(fd)

    return Load(step, lambda: os.close(fd))


def sqlite_load(db: Path) -> Load:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)

    def step(n: int) -> None:
        conn.execute("INSERT INTO load (id, payload) VALUES (?, ?)", (n, "r2b-" * 50))

    return Load(step, conn.close)


def postgres_load(server: pg.PgServer) -> Load:
    conn = server.connect()

    def step(n: int) -> None:
        conn.execute("INSERT INTO load (id, payload) VALUES (%s, %s)", (n, "r2b-" * 50))

    return Load(step, conn.close)


@contextlib.contextmanager
def application(app: str, mnt: Path) -> Iterator[tuple[list[str], Load]]:
    """The application on the mounted disk: its --app specs and its running load."""
    if app == "none":
        yield [], file_load(mnt)
    elif app == "sqlite":
        db = mnt / "app" / "bench.db"
        db.parent.mkdir()
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE load (id INTEGER PRIMARY KEY, payload TEXT)")
        yield [f"sqlite:{db}"], sqlite_load(db)
    elif app == "postgres":
        with pg.running(pg.initdb(mnt / "pgdata")) as server:
            with server.connect() as conn:
                conn.execute("CREATE TABLE load (id bigint PRIMARY KEY, payload text)")
            yield [f"postgres:{server.conninfo}"], postgres_load(server)
    else:
        raise SystemExit(f"unknown application {app!r}: none, sqlite or postgres")


def fill(mnt: Path, nbytes: int) -> None:
    with (mnt / "fill.bin").open("wb") as f:
        for _ in range(nbytes // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())


def summary(values: list[float], digits: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "max": round(max(values), digits)}


def bench_app(root: Path, app: str, size_mib: int, fill_fraction: float, n: int) -> dict[str, Any]:
    if app == "postgres" and (reason := pg.unavailable()):
        return {"skipped": reason}
    folder = root / app
    folder.mkdir()
    folder.chmod(0o711)
    image = make_ext4_image(folder / "disk.img", size_mib, deterministic=False)
    settings = ops.Settings(f"file://{folder / 'store'}", folder / "home")
    with loop_mount(image, folder / "mnt") as mnt:
        fill(mnt, int(size_mib * MiB * fill_fraction))
        with application(app, mnt) as (apps, load):
            ops.add_machine(settings, "bench", [str(image)], apps)
            load.start()
            frozen, took, stalls = [], [], []
            try:
                time.sleep(0.5)
                for i in range(n + 1):
                    started = time.monotonic()
                    result = ops.checkpoint(settings, "bench", "full" if i == 0 else "incremental")
                    ended = time.monotonic()
                    time.sleep(0.3)  # let writes that waited finish, and the load go on
                    if i == 0:
                        continue  # the first one uploads the whole disk: not a steady state
                    frozen.append(result.frozen_ms or 0.0)
                    took.append(ended - started)
                    stalls.append(load.stall_between(started, ended) * 1000)
            finally:
                load.stop()
            if load.error is not None:
                raise RuntimeError(f"the {app} load failed: {load.error!r}")
            seconds = load.writes[-1][1] - load.writes[0][0]
    return {
        "checkpoints": n,
        "consistency": result.consistency,
        "frozen_ms": summary(frozen),
        "checkpoint_s": summary(took, 3),
        "stall_ms": summary(stalls),
        "load_writes_per_s": round(len(load.writes) / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--apps", default="none,sqlite,postgres")
    parser.add_argument("--fill", type=float, default=0.4, help="fraction of the disk written")
    parser.add_argument("--dir", default=None, help="folder for images (default: system temp)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: loop mounts and fsfreeze")
    root = pg.reachable_dir("r2b-bench-freeze-") if args.dir is None else Path(args.dir)
    started = time.perf_counter()
    try:
        results = {
            app: bench_app(root, app, args.size_mib, args.fill, args.checkpoints)
            for app in args.apps.split(",")
        }
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    doc = {
        "disk_mib": args.size_mib,
        "fill": args.fill,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
