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


@contextlib.contextmanager
def freeze_filesystems(
    mountpoints: list[str], max_seconds: float = DEFAULT_MAX_FREEZE_S
) -> Iterator[list[str]]:
    """Freeze ``mountpoints`` for the body of the ``with``; thaw always, by max_seconds at most."""
    os.sync()
    watchdog = _start_watchdog(mountpoints, max_seconds)
    frozen: list[str] = []
    try:
        for mountpoint in mountpoints:
            _fsfreeze("-f", mountpoint)
            frozen.append(mountpoint)
        yield list(mountpoints)
    finally:
        expired = watchdog.poll() == EXPIRED
        watchdog.kill()
        watchdog.wait()
        _thaw_all(frozen)
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
