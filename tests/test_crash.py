"""Crash safety: a replicator killed with SIGKILL at any step leaves a valid journal.

A driver script (written to the test's folder) runs one replication cycle in a child process
over a ``FaultyStore`` whose ``fail_on`` hook sends the process SIGKILL at a chosen moment:
at the Nth pack upload, before the index upload, before the commit's ``put_if_absent``, or
(by replacing ``DigestCache.save``) right after the commit, before the local cache is saved.
No ``finally`` runs, no buffer is flushed: the same as a power cut on the replicator's host.

After each kill the store must be readable, the latest commit must fail over to the disk as it
was at the last *successful* commit (or at the killed cycle, when the kill came after its
commit), and the next ordinary cycle must finish the work so that failover equals the disk.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from r2b import ops
from r2b.errors import NotFound
from r2b.ids import DiskId, MachineName
from r2b.journal.format import DEFAULT_BLOCK_SIZE
from r2b.journal.snapshot import Journal
from r2b.store import LocalStore
from tests.appdisks import start_write
from tests.disks import (
    MIB,
    can_loop_mount,
    loop_mount,
    make_ext4_image,
    random_change,
    sha256_file,
    tool,
)

BLOCK = DEFAULT_BLOCK_SIZE  # the journal's tracking block = one chunk
DISK_MIB = 48  # random data: 48 MiB of changed blocks make 6 packs of 8 MiB
NAME = "crashy"

DRIVER = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import threading
    from pathlib import Path

    from r2b.journal.replicator import Replicator
    from r2b.journal.state import DigestCache
    from r2b.machines import load_machine
    from r2b.store import FaultyStore, LocalStore

    store_root, state_dir, name, point, nth = sys.argv[1:6]
    nth = int(nth)
    lock = threading.Lock()
    seen = {"pack": 0}


    def die(what):
        # The marker tells the test where the process died; then no cleanup at all.
        os.write(1, f"KILLED {point} {what}\\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


    def fail_on(operation, key):
        if point == "pack" and operation == "put" and "/packs/" in key:
            with lock:
                seen["pack"] += 1
                if seen["pack"] == nth:
                    die(f"pack#{nth} {key}")
        elif point == "index" and operation == "put" and "/index/" in key:
            die(key)
        elif point == "commit" and operation == "put_if_absent" and "/commits/" in key:
            die(key)
        return None


    if point == "cache":
        def save(self, machine, disk, seq, run, digests):
            die(f"cache-save seq={seq}")

        DigestCache.save = save

    store = FaultyStore(LocalStore(store_root), fail_on)
    result = Replicator(store, load_machine(store, name), Path(state_dir)).cycle()
    print(f"FINISHED seq={result.seq} blocks={result.blocks_changed}")
    sys.exit(3)
    """
)


def python() -> str:
    venv = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@dataclass
class Rig:
    settings: ops.Settings
    image: Path
    driver: Path

    @property
    def store(self) -> LocalStore:
        store = self.settings.open()
        assert isinstance(store, LocalStore)
        return store

    def kill_cycle(self, point: str, nth: int = 1) -> str:
        """Run one cycle in a child that SIGKILLs itself at ``point``; return its marker."""
        proc = subprocess.run(
            [
                python(),
                str(self.driver),
                str(self.store.root),
                str(self.settings.state_dir),
                NAME,
                point,
                str(nth),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == -signal.SIGKILL, (
            f"the driver was not killed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
        assert proc.stdout.startswith(f"KILLED {point} "), proc.stdout
        return proc.stdout.strip()

    def commits(self) -> list[int]:
        """Seqs of the committed cycles, each commit read and parsed."""
        return [c.seq for c in Journal(self.store, MachineName(NAME)).commits()]

    def failover_sha(self, dest: Path) -> str:
        [result] = ops.failover(self.settings, NAME, dest)
        assert sorted(p.name for p in dest.iterdir()) == ["disk0.img"]
        return sha256_file(result.path)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    driver = tmp_path / "crash_driver.py"
    driver.write_text(DRIVER)
    image = tmp_path / "disk.img"
    image.write_bytes(random.Random(1).randbytes(DISK_MIB * MIB))
    settings = ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")
    ops.add_machine(settings, NAME, [str(image)])
    return Rig(settings, image, driver)


def changed_blocks(before: bytes, after: Path) -> int:
    a = np.frombuffer(before, dtype=np.uint8).reshape(-1, BLOCK)
    b = np.frombuffer(after.read_bytes(), dtype=np.uint8).reshape(-1, BLOCK)
    return int((a != b).any(axis=1).sum())


# (kill point, nth pack, whether the kill came after the cycle's commit)
POINTS = [
    pytest.param("pack", 1, False, id="first-pack"),
    pytest.param("pack", 3, False, id="third-pack"),
    pytest.param("index", 1, False, id="before-index"),
    pytest.param("commit", 1, False, id="before-commit"),
    pytest.param("cache", 1, True, id="after-commit-before-cache"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "nth", "committed"), POINTS)
def test_kill_during_a_later_cycle(
    rig: Rig, tmp_path: Path, point: str, nth: int, committed: bool
) -> None:
    base = ops.replicate(rig.settings, NAME)
    assert base.seq == 1
    before_bytes = rig.image.read_bytes()
    sha_before = sha256_file(rig.image)

    random_change(rig.image, 0.5, seed=2)
    sha_after = sha256_file(rig.image)
    expected_blocks = changed_blocks(before_bytes, rig.image)
    assert expected_blocks >= 6 * (8 * MIB // BLOCK) - 8  # enough for six packs

    marker = rig.kill_cycle(point, nth)
    if point == "pack":
        assert f"pack#{nth} journal/{NAME}/packs/000000000002-" in marker

    # The store is valid: every commit reads, and the latest is a whole cycle.
    assert rig.commits() == ([1, 2] if committed else [1])
    expected = sha_after if committed else sha_before
    assert rig.failover_sha(tmp_path / "fo-after-kill") == expected

    # The next ordinary cycle finishes the work, without redoing a committed cycle.
    again = ops.replicate(rig.settings, NAME)
    if committed:
        assert (again.seq, again.blocks_changed, again.bytes_uploaded) == (2, 0, 0)
    else:
        assert again.seq == 2
        assert again.blocks_changed == expected_blocks
    assert rig.commits() == [1, 2]
    assert rig.failover_sha(tmp_path / "fo-recovered") == sha_after

    # And the machine keeps replicating normally afterwards.
    random_change(rig.image, 0.01, seed=3)
    later = ops.replicate(rig.settings, NAME)
    assert later.seq == 3 and later.blocks_changed > 0
    assert rig.failover_sha(tmp_path / "fo-later") == sha256_file(rig.image)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "nth", "committed"),
    [
        pytest.param("pack", 2, False, id="second-pack"),
        pytest.param("commit", 1, False, id="before-commit"),
        pytest.param("cache", 1, True, id="after-commit-before-cache"),
    ],
)
def test_kill_during_the_first_cycle(
    rig: Rig, tmp_path: Path, point: str, nth: int, committed: bool
) -> None:
    sha = sha256_file(rig.image)
    rig.kill_cycle(point, nth)

    if committed:
        assert rig.commits() == [1]
        assert rig.failover_sha(tmp_path / "fo-after-kill") == sha
    else:
        assert rig.commits() == []
        with pytest.raises(NotFound):
            ops.failover(rig.settings, NAME, tmp_path / "fo-after-kill")
        # Orphans of the killed run may remain; they are invisible to readers.
        assert list(rig.store.list(f"journal/{NAME}/commits/")) == []

    first = ops.replicate(rig.settings, NAME)
    assert first.seq == 1
    if committed:
        assert (first.blocks_changed, first.bytes_uploaded) == (0, 0)
    else:
        assert first.blocks_changed == DISK_MIB * MIB // BLOCK
    assert rig.failover_sha(tmp_path / "fo-recovered") == sha


@pytest.mark.slow
def test_two_kills_in_a_row_then_recovery(rig: Rig, tmp_path: Path) -> None:
    """Orphans of several dead runs for the same seq do not confuse the next cycle."""
    ops.replicate(rig.settings, NAME)
    random_change(rig.image, 0.05, seed=4)
    rig.kill_cycle("index")
    random_change(rig.image, 0.05, seed=5)
    rig.kill_cycle("commit")
    packs = list(rig.store.list(f"journal/{NAME}/packs/000000000002-"))
    assert packs  # orphans for seq 2 from the dead runs (the second one drained its uploads)
    assert rig.commits() == [1]

    again = ops.replicate(rig.settings, NAME)
    assert again.seq == 2
    assert rig.failover_sha(tmp_path / "fo") == sha256_file(rig.image)
    # The committed cycle names only its own run's objects.
    commit = Journal(rig.store, MachineName(NAME)).commit(2)
    cycle = commit.disks[DiskId("disk0")]
    assert all(f"-{commit.run}-" in key for key in [cycle.index, *cycle.packs])


# --- killed while applications are frozen ------------------------------------------------

FREEZE_DRIVER = textwrap.dedent(
    """
    import contextlib
    import os
    import signal
    import sys
    from pathlib import Path

    import r2b.apps.agent as agent
    import r2b.ops as ops

    store_url, home, name, max_freeze_s = sys.argv[1:5]
    real_freeze = agent.freeze_filesystems


    @contextlib.contextmanager
    def freeze_then_die(mounts, max_seconds):
        with real_freeze(mounts, max_seconds) as frozen:
            os.write(1, f"KILLED frozen {','.join(frozen.mounts)}\\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)
            yield frozen


    agent.freeze_filesystems = freeze_then_die
    ops.checkpoint(ops.Settings(store_url, Path(home)), name, max_freeze_s=float(max_freeze_s))
    print("FINISHED")
    sys.exit(3)
    """
)


@pytest.mark.root
@pytest.mark.slow
def test_kill_while_frozen_does_not_leave_the_filesystem_frozen(tmp_path: Path) -> None:
    """The freeze limit (max_freeze_s) must hold even when the replicator dies mid-freeze:
    the watchdog is a process of its own. The dead replicator's spool is removed by the next
    checkpoint."""
    if not can_loop_mount():
        pytest.skip("loop mounts need root and a free loop device")
    image = make_ext4_image(tmp_path / "app.img", 16)
    settings = ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")
    ops.add_machine(settings, "frozen", [str(image)])
    driver = tmp_path / "freeze_driver.py"
    driver.write_text(FREEZE_DRIVER)
    limit = 1.0
    writer: threading.Thread | None = None
    with loop_mount(image, tmp_path / "mnt") as mnt:
        try:
            (mnt / "data.txt").write_text("application data\n")
            proc = subprocess.run(
                [
                    python(),
                    str(driver),
                    settings.store_url,
                    str(settings.home),
                    "frozen",
                    str(limit),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
            assert proc.stdout.startswith("KILLED frozen "), proc.stdout
            time.sleep(limit)
            writer, done = start_write(mnt / "after.txt", b"can the application write?\n")
            writable = done.wait(limit + 2)
            spools = set(Path(tempfile.gettempdir()).glob("r2b-spool-*"))
            ops.checkpoint(settings, "frozen")
            left = set(Path(tempfile.gettempdir()).glob("r2b-spool-*"))
        finally:
            # Thaw whatever happened, and let a blocked writer finish, so the unmount can go on.
            subprocess.run([tool("fsfreeze"), "-u", str(mnt)], capture_output=True, check=False)
            if writer is not None:
                writer.join(30)
    assert writable, f"{mnt} stayed frozen after the replicator died (limit {limit} s)"
    assert spools and not (spools & left), f"the killed replicator's spool was left: {spools}"
    # The dead checkpoint marked nothing: plain cycles, then the next checkpoint's mark.
    marks = [c.checkpoint for c in Journal(settings.open(), MachineName("frozen")).commits()]
    assert marks[:-1] == [None] * (len(marks) - 1) and marks[-1] is not None


def test_driver_without_a_kill_point_finishes(rig: Rig) -> None:
    """The driver itself works: with no matching kill point it completes the cycle."""
    proc = subprocess.run(
        [
            python(),
            str(rig.driver),
            str(rig.store.root),
            str(rig.settings.state_dir),
            NAME,
            "never",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("FINISHED seq=1 "), proc.stdout
    assert rig.commits() == [1]
