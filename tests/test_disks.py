"""Proof that each helper in tests/disks.py does what it says, with the real tools."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from tests import disks

MIB = disks.MIB


@pytest.fixture
def loop_ok() -> None:
    """Fail (not skip) with a clear message where loop devices cannot be used."""
    if not disks.can_loop_mount():
        pytest.fail("loop mounts need root and a free loop device (losetup --find failed)")


def inode_times(image: Path, inside_path: str) -> set[str]:
    """Return the distinct raw time values debugfs stat shows for ``inside_path``."""
    text = disks.debugfs(image, f'stat "{inside_path}"').decode(errors="replace")
    return set(re.findall(r"time: (0x[0-9a-f]+:[0-9a-f]+)", text))


# --- trees and sample files ----------------------------------------------------------------


def test_make_tree_writes_nested_files(tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "d/e/f.bin": b"\x00\x01", "ñ/日本.txt": "ü".encode()}
    disks.make_tree(tmp_path / "t", files)
    for name, data in files.items():
        assert (tmp_path / "t" / name).read_bytes() == data


@pytest.mark.parametrize("bad", ["", "/abs", "../up", "a/../../b"])
def test_make_tree_rejects_paths_outside(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        disks.make_tree(tmp_path, {bad: b"x"})


def test_sample_files_mix_is_deterministic() -> None:
    files = disks.sample_files(seed=7, count=10, max_size=20_000)
    assert files == disks.sample_files(seed=7, count=10, max_size=20_000)
    assert files != disks.sample_files(seed=8, count=10, max_size=20_000)
    assert len(files) == 10
    assert all(1 <= len(d) <= 20_000 for d in files.values())
    assert any(not n.isascii() for n in files)
    assert any(n.count("/") >= 3 for n in files)
    text = [d for n, d in files.items() if n.startswith("text/")]
    assert text and all(d.decode().isascii() for d in text)
    zeros = [d for n, d in files.items() if n.startswith("sparse/")]
    assert zeros and all(d.count(0) >= len(d) - 4 * 64 for d in zeros)


# --- small file helpers --------------------------------------------------------------------


def test_sparse_file_and_sha256(tmp_path: Path) -> None:
    path = disks.sparse_file(tmp_path / "s.img", 3 * MIB + 5)
    assert path.stat().st_size == 3 * MIB + 5
    assert path.stat().st_blocks * 512 < MIB  # holes, not written zeros
    assert disks.sha256_file(path) == hashlib.sha256(bytes(3 * MIB + 5)).hexdigest()


def test_random_change_changes_about_fraction(tmp_path: Path) -> None:
    image = disks.sparse_file(tmp_path / "r.img", 8 * MIB)
    changed = disks.random_change(image, fraction=0.1, seed=1)
    after = image.read_bytes()
    differing = len(after) - after.count(0)  # old bytes were all zero
    assert differing == changed
    assert changed == round(0.1 * 2048) * 4096
    chunks = {i // 4096 for i in range(0, len(after), 4096) if any(after[i : i + 4096])}
    assert len(chunks) == round(0.1 * 2048)


def test_random_change_is_seeded_and_exact(tmp_path: Path) -> None:
    content = bytes(range(256)) * 400 + b"tail"  # 102404 bytes: the last chunk is short
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(content)
    b.write_bytes(content)
    changed = disks.random_change(a, 0.5, seed=3, granularity=1000)
    assert changed == disks.random_change(b, 0.5, seed=3, granularity=1000)
    after = a.read_bytes()
    assert after == b.read_bytes()
    assert sum(x != y for x, y in zip(content, after, strict=True)) == changed
    assert changed in (52 * 1000, 51 * 1000 + 4)  # round(0.5 * 103) chunks
    assert disks.random_change(b, 0.0, seed=9) == 0
    assert disks.random_change(b, 1.0, seed=9, granularity=7) == len(content)


# --- ext4 images ---------------------------------------------------------------------------


def test_make_ext4_image_round_trips_files(tmp_path: Path) -> None:
    files = disks.sample_files(seed=1, count=10, max_size=64 * 1024)
    image = disks.make_ext4_image(tmp_path / "fs.img", 16, files)
    assert image.stat().st_size == 16 * MIB
    for name, data in files.items():
        assert disks.debugfs_read(image, name) == data, name
    disks.e2fsck(image)


def test_make_ext4_image_is_byte_deterministic(tmp_path: Path) -> None:
    files = disks.sample_files(seed=2, count=6, max_size=8192)
    one = disks.make_ext4_image(tmp_path / "one.img", 8, files)
    two = disks.make_ext4_image(tmp_path / "two.img", 8, files)
    assert disks.sha256_file(one) == disks.sha256_file(two)
    fixed = {f"{disks.FIXED_EPOCH:#x}:00000000"}
    for inside in ["/", "/lost+found", *disks._tree_paths(files)]:
        assert inode_times(one, inside) == fixed, inside


def test_make_ext4_image_empty_and_block_size(tmp_path: Path) -> None:
    image = disks.make_ext4_image(tmp_path / "e.img", 8, block_size=1024)
    text = disks.debugfs(image, "stats").decode()
    assert re.search(r"^Block size:\s+1024$", text, re.MULTILINE)
    assert re.search(r"^Filesystem UUID:\s+" + disks.FIXED_UUID, text, re.MULTILINE)
    disks.e2fsck(image)


def test_tool_failure_is_runtime_error_with_stderr(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"mke2fs .* failed \(exit \d+\): stderr: \S"):
        disks.make_ext4_image(tmp_path / "full.img", 8, {"big": os.urandom(12 * MIB)})
    with pytest.raises(RuntimeError, match=r"e2fsck.*exit"):
        disks.e2fsck(disks.sparse_file(tmp_path / "zeros.img", MIB))
    with pytest.raises(RuntimeError, match="not found"):
        disks.tool("no-such-tool-r2b")


def test_debugfs_read_missing_file_raises(tmp_path: Path) -> None:
    image = disks.make_ext4_image(tmp_path / "fs.img", 8, {"a": b"1"})
    with pytest.raises(RuntimeError, match="File not found"):
        disks.debugfs_read(image, "/nope")
    assert disks.debugfs_exists(image, "/a")
    assert not disks.debugfs_exists(image, "/nope")


def test_debugfs_write_creates_replaces_and_stays_clean(tmp_path: Path) -> None:
    image = disks.make_ext4_image(tmp_path / "fs.img", 16, {"keep.txt": b"kept", "old": b"x"})
    big = bytes(range(256)) * 1024
    disks.debugfs_write(image, "/new/dirs/in side/ñ.bin", big)
    disks.debugfs_write(image, "old", b"replaced")
    disks.debugfs_write(image, "/old", b"replaced again")
    disks.debugfs_write(image, "/new/dirs/second", b"")
    assert disks.debugfs_read(image, "/new/dirs/in side/ñ.bin") == big
    assert disks.debugfs_read(image, "/old") == b"replaced again"
    assert disks.debugfs_read(image, "/new/dirs/second") == b""
    assert disks.debugfs_read(image, "/keep.txt") == b"kept"
    disks.e2fsck(image)


# --- GPT disks -----------------------------------------------------------------------------


def test_make_gpt_disk_matches_sgdisk_and_partx(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    spans = disks.make_gpt_disk(disk, 32, [(8, "8300"), (12, "0700"), (4, "8200")])
    assert disk.stat().st_size == 32 * MIB
    assert spans == [(1 * MIB, 8 * MIB), (9 * MIB, 12 * MIB), (21 * MIB, 4 * MIB)]
    assert [code for *_, code in disks.gpt_partitions(disk)] == ["8300", "0700", "8200"]
    out = disks.run(["partx", "-b", "-P", "-o", "NR,START,SIZE,TYPE", str(disk)]).stdout
    rows = re.findall(r'START="(\d+)" SIZE="(\d+)" TYPE="([0-9a-f-]+)"', out.decode())
    assert [(int(s) * 512, int(n)) for s, n, _ in rows] == spans
    assert rows[0][2] == "0fc63daf-8483-4772-8e79-3d69d8477de4"  # Linux filesystem
    assert rows[1][2] == "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"  # Microsoft basic data


def test_make_gpt_disk_rejects_overfull_and_bad_code(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        disks.make_gpt_disk(tmp_path / "d.img", 8, [(8, "8300")])
    with pytest.raises(RuntimeError, match="sgdisk"):
        disks.make_gpt_disk(tmp_path / "d.img", 8, [(2, "zz00")])


def test_ext4_in_partition_readable_at_offset(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    (first, second) = disks.make_gpt_disk(disk, 24, [(8, "0700"), (12, "8300")])
    files = disks.sample_files(seed=5, count=5, max_size=30_000)
    disks.make_ext4_in_partition(disk, *second, files)
    assert disks.gpt_partitions(disk)[1][:2] == second  # the GPT survived
    part = disks.read_region(disk, *second, tmp_path / "part.img")
    for name, data in files.items():
        assert disks.debugfs_read(part, name) == data
    disks.e2fsck(part)
    untouched = disks.read_region(disk, *first, tmp_path / "first.img")
    assert untouched.read_bytes() == bytes(first[1])


# --- loop devices --------------------------------------------------------------------------


@pytest.mark.root
def test_can_loop_mount_as_root() -> None:
    assert disks.can_loop_mount(), "CI runs as root with loop devices: this must hold"


@pytest.mark.root
def test_loop_mount_write_then_read_offline(tmp_path: Path, loop_ok: None) -> None:
    image = disks.make_ext4_image(tmp_path / "fs.img", 16, {"pre/existing.txt": b"before"})
    mnt = tmp_path / "mnt"
    with disks.loop_mount(image, mnt) as root:
        assert (root / "pre" / "existing.txt").read_bytes() == b"before"
        with open(root / "through-mount.bin", "wb") as f:
            f.write(b"written via the kernel" * 100)
    assert not any(mnt.iterdir())  # unmounted
    assert disks.debugfs_read(image, "/through-mount.bin") == b"written via the kernel" * 100
    disks.e2fsck(image)


@pytest.mark.root
def test_loop_mount_cleans_up_on_exception(tmp_path: Path, loop_ok: None) -> None:
    image = disks.make_ext4_image(tmp_path / "fs.img", 8)
    with pytest.raises(KeyError), disks.loop_mount(image, tmp_path / "mnt"):
        raise KeyError("boom")
    assert not _mounted(tmp_path / "mnt")
    assert str(image) not in _attached()


@pytest.mark.root
def test_loop_attach_yields_device_and_detaches(tmp_path: Path, loop_ok: None) -> None:
    image = disks.make_ext4_image(tmp_path / "fs.img", 8, {"x": b"y"})
    with disks.loop_attach(image, read_only=True) as dev:
        assert re.fullmatch(r"/dev/loop\d+", str(dev))
        assert str(image) in _attached()
        with dev.open("rb") as f:
            assert f.read() == image.read_bytes()
    assert str(image) not in _attached()


@pytest.mark.root
def test_loop_mount_partition_by_offset(tmp_path: Path, loop_ok: None) -> None:
    disk = tmp_path / "disk.img"
    [(offset, length)] = disks.make_gpt_disk(disk, 16, [(12, "8300")])
    disks.make_ext4_in_partition(disk, offset, length, {"p.txt": b"in partition"})
    with disks.loop_mount(disk, tmp_path / "mnt", offset=offset, sizelimit=length) as root:
        assert (root / "p.txt").read_bytes() == b"in partition"


def _mounted(mountpoint: Path) -> bool:
    """Tell whether ``mountpoint`` appears in /proc/self/mounts."""
    return any(
        line.split()[1] == str(mountpoint)
        for line in Path("/proc/self/mounts").read_text().splitlines()
    )


def _attached() -> str:
    """Return ``losetup --list`` output (backing files of attached loop devices)."""
    return disks.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"]).stdout.decode()
