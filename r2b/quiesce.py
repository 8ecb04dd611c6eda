"""Filesystem quiesce: find the mounted filesystems a disk holds, freeze them, always thaw.

A disk is a block device or an image file attached to a loop device; the filesystems it holds
are the mounts (``/proc/self/mountinfo``) whose source is that device or one of its partitions.
``freeze_filesystems`` is a context manager: ``sync``, ``fsfreeze -f`` each mount, yield, and
``fsfreeze -u`` each mount on the way out — also on error or Ctrl-C. A watchdog *process*
(its own session, so it outlives us) thaws the mounts when ``max_seconds`` pass or when this
process dies (SIGKILL included): applications are never left frozen. When the limit passed,
the caller learns it from ``QuiesceError`` on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Mount:
    """A mounted filesystem on a protected disk: where, from which device, which partition."""

    mountpoint: str
    device: str
    partition: int | None  # None: the filesystem is on the whole disk


def _partition_of(base: str, disk_names: set[str]) -> tuple[bool, int | None]:
    for name in disk_names:
        if base == name:
            return True, None
        suffix = base[len(name) :].removeprefix("p")
        if base.startswith(name) and suffix.isdigit():
            return True, int(suffix)
    return False, None


def mounts(devices: list[str]) -> list[Mount]:
    """Filesystems mounted from one of ``devices`` or a partition of one (``loop0p1``)."""
    found: dict[str, Mount] = {}
    names = {os.path.basename(d) for d in devices}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        source = fields[1] if len(fields) > 1 else ""
        mountpoint = left.split()[4].replace("\\040", " ")
        ours, partition = _partition_of(os.path.basename(source), names)
        if source.startswith("/dev/") and ours:
            found[mountpoint] = Mount(mountpoint, source, partition)
    return [found[m] for m in sorted(found)]


def mounts_of(devices: list[str]) -> list[str]:
    return [m.mountpoint for m in mounts(devices)]


def disk_mounts(disk_path: str) -> list[Mount]:
    return mounts(backing_devices(disk_path))


def mounts_of_disk(disk_path: str) -> list[str]:
    return mounts_of(backing_devices(disk_path))


_WATCHDOG = """
import os, subprocess, sys, time
parent, limit, tool, mounts = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
deadline = time.monotonic() + limit
def alive():
    try:
        os.kill(parent, 0)
        return True
    except ProcessLookupError:
        return False
while alive() and time.monotonic() < deadline:
    time.sleep(0.05)
for mount in mounts:
    subprocess.run([tool, "-u", mount], capture_output=True)
sys.exit(3 if alive() else 4)
"""
EXPIRED = 3  # the watchdog's exit status when it thawed because the limit passed


def _start_watchdog(mountpoints: list[str], max_seconds: float) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-c",
        _WATCHDOG,
        str(os.getpid()),
        str(max_seconds),
        _tool("fsfreeze"),
        *mountpoints,
    ]
    return subprocess.Popen(
        argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@dataclass
class FrozenWindow:
    """The filesystems frozen, and for how long (set on thaw): what applications felt."""

    mounts: list[str]
    ms: float | None = None


@contextlib.contextmanager
def freeze_filesystems(
    mountpoints: list[str], max_seconds: float = DEFAULT_MAX_FREEZE_S
) -> Iterator[FrozenWindow]:
    """Freeze ``mountpoints`` for the body of the ``with``; thaw always, by max_seconds at most."""
    os.sync()  # flush outside the window, so the freeze itself has little left to write
    watchdog = _start_watchdog(mountpoints, max_seconds)
    frozen: list[str] = []
    window = FrozenWindow(list(mountpoints))
    started = time.perf_counter()
    try:
        for mountpoint in mountpoints:
            _fsfreeze("-f", mountpoint)
            frozen.append(mountpoint)
        yield window
    finally:
        expired = watchdog.poll() == EXPIRED
        try:
            _thaw_all(frozen)
        finally:
            window.ms = round((time.perf_counter() - started) * 1000, 3)
            watchdog.kill()
            watchdog.wait()
    if expired:
        raise QuiesceError(
            ", ".join(mountpoints),
            f"the freeze passed its limit of {max_seconds:g} s and was undone",
        )


def _thaw_all(frozen: list[str]) -> None:
    errors = []
    for mountpoint in frozen:
        try:
            _fsfreeze("-u", mountpoint)
        except QuiesceError as e:  # thaw the others before reporting
            errors.append(e)
    if errors:
        raise errors[0]


def _fsfreeze(flag: str, mountpoint: str) -> None:
    result = subprocess.run(
        [_tool("fsfreeze"), flag, mountpoint], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0 and not (flag == "-u" and "Invalid argument" in result.stderr):
        # Thawing a filesystem that is not frozen says EINVAL: it is thawed, which is the goal.
        raise QuiesceError(mountpoint, result.stderr.strip() or f"fsfreeze {flag} failed")
