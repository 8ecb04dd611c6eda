"""Filesystem quiesce: find the mounted filesystems a disk holds, freeze them, always thaw.

A disk is a block device or an image file attached to a loop device; the filesystems it holds
are the mounts (``/proc/self/mountinfo``) whose source is that device or one of its partitions.
``freeze_filesystems`` is a context manager: ``sync``, ``fsfreeze -f`` each mount, yield, and
``fsfreeze -u`` each mount on the way out — also on error or Ctrl-C. A watchdog thaws after
``max_seconds`` whatever happens, so a stuck caller cannot keep applications frozen; the caller
then learns it from ``QuiesceError`` on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from r2b.errors import QuiesceError

DEFAULT_MAX_FREEZE_S = 60.0


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise QuiesceError(name, "the tool is not installed (Debian package util-linux)")
    return found


def backing_devices(disk_path: str) -> list[str]:
    """The block devices that present ``disk_path``: itself, or the loop devices over the file."""
    mode = os.stat(disk_path).st_mode
    if stat.S_ISBLK(mode):
        return [os.path.realpath(disk_path)]
    try:
        out = subprocess.run(
            [_tool("losetup"), "-j", os.path.realpath(disk_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (subprocess.SubprocessError, QuiesceError):
        return []
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def mounts_of(devices: list[str]) -> list[str]:
    """Mount points whose source is one of ``devices`` or a partition of one (``loop0p1``)."""
    found = []
    names = {os.path.basename(d) for d in devices}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        source = right.split()[1] if len(right.split()) > 1 else ""
        mountpoint = left.split()[4].replace("\\040", " ")
        base = os.path.basename(source)
        if source.startswith("/dev/") and any(
            base == n or (base.startswith(n) and base[len(n) :].lstrip("p").isdigit())
            for n in names
        ):
            found.append(mountpoint)
    return sorted(set(found))


def mounts_of_disk(disk_path: str) -> list[str]:
    return mounts_of(backing_devices(disk_path))


@contextlib.contextmanager
def freeze_filesystems(
    mountpoints: list[str], max_seconds: float = DEFAULT_MAX_FREEZE_S
) -> Iterator[list[str]]:
    """Freeze ``mountpoints`` for the body of the ``with``; thaw always, by max_seconds at most."""
    os.sync()
    frozen: list[str] = []
    lock = threading.Lock()
    expired = threading.Event()

    def thaw_all() -> None:
        errors = []
        with lock:
            while frozen:
                try:
                    _fsfreeze("-u", frozen.pop())
                except QuiesceError as e:  # thaw the others before reporting
                    errors.append(e)
        if errors:
            raise errors[0]

    def watchdog() -> None:
        expired.set()
        thaw_all()

    timer = threading.Timer(max_seconds, watchdog)
    timer.daemon = True
    try:
        for mountpoint in mountpoints:
            _fsfreeze("-f", mountpoint)
            with lock:
                frozen.append(mountpoint)
        timer.start()
        yield list(mountpoints)
    finally:
        timer.cancel()
        thaw_all()
    if expired.is_set():
        raise QuiesceError(
            ", ".join(mountpoints),
            f"the freeze passed its limit of {max_seconds:g} s and was undone",
        )


def _fsfreeze(flag: str, mountpoint: str) -> None:
    result = subprocess.run(
        [_tool("fsfreeze"), flag, mountpoint], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0 and not (flag == "-u" and "Invalid argument" in result.stderr):
        # Thawing a filesystem that is not frozen says EINVAL: it is thawed, which is the goal.
        raise QuiesceError(mountpoint, result.stderr.strip() or f"fsfreeze {flag} failed")
