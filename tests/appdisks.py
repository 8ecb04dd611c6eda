"""Helpers shared by the application-quiesce tests (tests/test_apps_*.py) and bench/freeze.py.

- ``FreezeWatch``: records when each filesystem freeze of a checkpoint took hold and when it
  was undone (``time.monotonic()``), by wrapping the ``fsfreeze`` calls of ``r2b.quiesce``; it
  only observes, the freeze itself is the product's.
- ``restored_mount``: ``ops.restore_disk`` a backup to an image file, loop-mount a read-write
  copy of it (so that starting an application on it leaves the restored image as it was).
- ``write_completes``: whether a write + fsync on a mount finishes promptly (not frozen).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from r2b import ops, quiesce
from tests.disks import loop_mount, tool


@dataclass
class Window:
    """One checkpoint's freeze, in ``time.monotonic()`` seconds."""

    frozen_at: float  # the last ``fsfreeze -f`` returned: every filesystem frozen
    thaw_started: float | None = None  # the first ``fsfreeze -u`` is about to run
    thawed_at: float | None = None  # the last ``fsfreeze -u`` returned
    mounts: list[str] = field(default_factory=list)


class FreezeWatch:
    """Times each freeze and thaw r2b does, by wrapping ``r2b.quiesce._fsfreeze`` (install with
    ``patch``). It only observes: every call goes on to the real one."""

    def __init__(self) -> None:
        self.windows: list[Window] = []
        self._real: Callable[[str, str], None] = quiesce._fsfreeze
        self._open: Window | None = None

    def _observed(self, flag: str, mountpoint: str) -> None:
        if flag == "-u" and self._open is not None and self._open.thaw_started is None:
            self._open.thaw_started = time.monotonic()
        try:
            self._real(flag, mountpoint)
        finally:
            now = time.monotonic()
            if flag == "-f":
                if self._open is None or self._open.thaw_started is not None:
                    self._open = Window(now)
                    self.windows.append(self._open)
                self._open.frozen_at = now
                self._open.mounts.append(mountpoint)
            elif self._open is not None:
                self._open.thawed_at = now

    def patch(self, monkeypatch: Any) -> FreezeWatch:
        monkeypatch.setattr(quiesce, "_fsfreeze", self._observed)
        return self

    @property
    def last(self) -> Window:
        assert self.windows, "no filesystem freeze happened"
        return self.windows[-1]


@contextlib.contextmanager
def restored_mount(settings: ops.Settings, backup: str, folder: Path, name: str) -> Iterator[Path]:
    """Restore ``backup``'s disk to ``folder/name.img``, mount a read-write copy; yield the mount.

    Both images are removed on the way out.
    """
    restored = folder / f"{name}.img"
    work = folder / f"{name}-rw.img"
    try:
        ops.restore_disk(settings, backup, restored)
        subprocess.run(
            ["cp", "--sparse=always", str(restored), str(work)], check=True, capture_output=True
        )
        with loop_mount(work, folder / f"{name}-mnt") as mnt:
            yield mnt
    finally:
        restored.unlink(missing_ok=True)
        work.unlink(missing_ok=True)


def write_completes(mount: Path, timeout_s: float = 3.0) -> bool:
    """Write and fsync a file on ``mount`` in a thread; True when it finished in ``timeout_s``.

    When it did not (the filesystem is frozen), the mount is thawed so that the writer and the
    test can finish; the answer stays False.
    """
    done = threading.Event()

    def body() -> None:
        with (mount / f"probe-{time.monotonic_ns()}").open("wb") as f:
            f.write(b"is the filesystem writable?\n")
            f.flush()
            os.fsync(f.fileno())
        done.set()

    writer = threading.Thread(target=body, daemon=True)
    writer.start()
    finished = done.wait(timeout_s)
    if not finished:
        subprocess.run([tool("fsfreeze"), "-u", str(mount)], capture_output=True, check=False)
        writer.join(30)
    return finished


def thaw_quietly(mount: Path) -> None:
    """``fsfreeze -u`` (a no-op on a filesystem that is not frozen): cleanup after a failure."""
    subprocess.run([tool("fsfreeze"), "-u", str(mount)], capture_output=True, check=False)


class BackgroundLoad:
    """An application writing from a thread: ``commits[i] = (id, sent, returned)`` with
    ``time.monotonic()`` taken just before a write was sent and just after it returned,
    ``sent`` the start time of every attempt, ``error`` what stopped it. Subclasses define
    ``_run`` (and call ``super().__init__(name)``)."""

    def __init__(self, name: str) -> None:
        self.commits: list[tuple[int, float, float]] = []
        self.sent: dict[int, float] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def wait_for(self, more: int, timeout_s: float = 30.0) -> None:
        """Until ``more`` further writes have been committed."""
        target = len(self.commits) + more
        deadline = time.monotonic() + timeout_s
        while len(self.commits) < target:
            assert self.error is None, f"the load failed: {self.error!r}"
            assert time.monotonic() < deadline, f"the load stalled at {len(self.commits)} writes"
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the load did not stop"


def start_write(path: Path, data: bytes) -> tuple[threading.Thread, threading.Event]:
    """Write and fsync ``path`` in a thread (it blocks while the filesystem is frozen)."""
    done = threading.Event()

    def body() -> None:
        with path.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        done.set()

    writer = threading.Thread(target=body, daemon=True)
    writer.start()
    return writer, done
