"""Real filesystem images for the catalog and granular-restore tests, made by the real tools.

- ext4: ``mke2fs -d`` (with ``inline_data``, so tiny files live in their inode), then
  ``debugfs`` to make a fragmented file (free every other block of a run of small files, then
  write a big one: libext2fs allocates into the gaps);
- FAT32: ``mkfs.vfat -F 32`` and ``mcopy`` (UTF-8 locale, so long names are exact), fragmented
  the same way with ``mdel``;
- NTFS: ``mkntfs``, then ``wimcapture`` of a folder and ``wimapply`` of it onto the image file
  (libntfs-3g, no mount); fragmented by filling the volume, truncating every other filler
  (``ntfstruncate``) and copying a file in with ``ntfscp``;
- a crafted ext4 whose directory entries are patched, after mke2fs, into names that try to
  leave the restore folder.

Each helper also returns (or fills) the *expected* tree: path → ``Expected`` as the
filesystem holds it, to compare restores against byte for byte. Tools run through
``tests.disks.run`` (absolute paths, errors carry the tool's output).
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.disks import MIB, run, sparse_file

UTF8 = {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Expected:
    """An entry as the filesystem should hold it: a file's bytes, or a symlink's target."""

    kind: str  # file, dir, symlink
    data: bytes = b""
    target: str = ""
    mode: int | None = None
    mtime: int | None = None  # whole seconds

    @property
    def size(self) -> int:
        return len(self.data)


def sparse_bytes(size: int, islands: Mapping[int, bytes]) -> bytes:
    """``size`` zero bytes with ``islands`` (offset → bytes) written in."""
    data = bytearray(size)
    for offset, island in islands.items():
        data[offset : offset + len(island)] = island
    return bytes(data)


def sample_tree(seed: int, sparse: bool = True, links: bool = True) -> dict[str, Expected]:
    """A tree with every kind of entry the tests care about (deterministic in ``seed``)."""
    rng = random.Random(seed)
    tree: dict[str, Expected] = {
        "docs": Expected("dir", mode=0o755),
        "docs/readme.txt": Expected("file", b"hello, catalog\n" * 40, mode=0o644),
        "docs/tiny.txt": Expected("file", b"hi\n", mode=0o600),
        "docs/empty.txt": Expected("file", b"", mode=0o644),
        "docs/deep": Expected("dir", mode=0o700),
        "docs/deep/er": Expected("dir", mode=0o755),
        "docs/deep/er/still.bin": Expected("file", rng.randbytes(70_000), mode=0o640),
        "data": Expected("dir", mode=0o755),
        "data/random.bin": Expected("file", rng.randbytes(1_000_003), mode=0o644),
        "data/script.sh": Expected("file", b"#!/bin/sh\necho r2b\n", mode=0o755),
        "ünïcødé_directory_name": Expected("dir", mode=0o755),
        "ünïcødé_directory_name/日本語_ñandú_file.txt": Expected("file", "ñ".encode() * 999),
        "ünïcødé_directory_name/Ærøskøbing long name.dat": Expected("file", rng.randbytes(5000)),
        # 8.3 names: on FAT only a short entry in the OEM code page, no long name
        "ünïcødé_directory_name/ünï.txt": Expected("file", b"short name\n"),
        "ünïcødé_directory_name/ÄRGER.TXT": Expected("file", b"upper case\n"),
    }
    if sparse:
        size = 6 * MIB  # ends with data on a 4 KiB boundary: mke2fs -d drops a trailing hole
        islands = {0: rng.randbytes(4096), 3 * MIB: rng.randbytes(8192), size - 4096: b"E" * 4096}
        tree["data/sparse.img"] = Expected("file", sparse_bytes(size, islands), mode=0o644)
    if links:
        tree["docs/link-to-readme"] = Expected("symlink", target="readme.txt")
        tree["docs/deep/er/up-two"] = Expected("symlink", target="../../readme.txt")
    for path, entry in list(tree.items()):
        tree[path] = Expected(entry.kind, entry.data, entry.target, entry.mode, 1_500_000_000)
    return tree


def write_tree(root: Path, tree: Mapping[str, Expected]) -> Path:
    """Create ``tree`` under ``root`` (sparse files written sparse; modes and mtimes set)."""
    root.mkdir(parents=True, exist_ok=True)
    for path, entry in sorted(tree.items()):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "dir":
            target.mkdir(exist_ok=True)
        elif entry.kind == "symlink":
            os.symlink(entry.target, target)
        else:
            _write_sparse(target, entry.data)
    for path, entry in sorted(tree.items(), key=lambda kv: -kv[0].count("/")):
        target = root / path
        if entry.kind != "symlink" and entry.mode is not None:
            target.chmod(entry.mode)
        if entry.mtime is not None:
            os.utime(target, (entry.mtime, entry.mtime), follow_symlinks=False)
    return root


def _write_sparse(path: Path, data: bytes, block: int = 4096) -> None:
    with path.open("wb") as f:
        f.truncate(len(data))
        for offset in range(0, len(data), block):
            piece = data[offset : offset + block]
            if piece.count(0) != len(piece):
                f.seek(offset)
                f.write(piece)


# --- ext4 ------------------------------------------------------------------------------------


def make_ext4(
    image: Path, size_mib: int, tree: Mapping[str, Expected], features: str = "inline_data"
) -> Path:
    """An ext4 image of ``tree`` made by ``mke2fs -d`` (1 KiB blocks for small images)."""
    sparse_file(image, 0)
    sparse_file(image, size_mib * MIB)
    with tempfile.TemporaryDirectory(prefix="r2b-ext4-") as tmp:
        src = write_tree(Path(tmp) / "src", tree)
        run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", features, "-d", src, image])
    return image


def ext4_fragmented(image: Path, tree: dict[str, Expected], name: str, size: int) -> None:
    """Add ``name`` (``size`` random bytes) to the ext4 ``image`` in pieces: fill a run of
    blocks with small files, delete every other one, write the file into the holes."""
    rng = random.Random(size)
    with tempfile.TemporaryDirectory(prefix="r2b-frag-") as tmp:
        filler = Path(tmp) / "filler"
        filler.write_bytes(rng.randbytes(4096))
        commands = ["mkdir /frag"] + [f'write "{filler}" /frag/f{i:03d}' for i in range(64)]
        commands += [f"rm /frag/f{i:03d}" for i in range(0, 64, 2)]
        data = rng.randbytes(size)
        source = Path(tmp) / "data"
        source.write_bytes(data)
        commands.append(f'write "{source}" /{name}')
        _debugfs(image, commands, Path(tmp))
        for i in range(1, 64, 2):
            tree[f"frag/f{i:03d}"] = Expected("file", filler.read_bytes())
    tree["frag"] = Expected("dir")
    tree[name] = Expected("file", data)


def _debugfs(image: Path, commands: list[str], tmp: Path) -> None:
    script = tmp / "commands"
    script.write_text("\n".join(commands) + "\n")
    proc = run(["debugfs", "-w", "-f", script, image])
    errors = [
        line
        for line in proc.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("debugfs ")
    ]
    if errors:
        raise RuntimeError(f"debugfs on {image}: {errors[:5]}")


# --- FAT32 -----------------------------------------------------------------------------------


def make_fat32(image: Path, size_mib: int, tree: Mapping[str, Expected]) -> Path:
    """A FAT32 image of ``tree`` (files and folders; FAT has no symlinks or sparse files)."""
    sparse_file(image, 0)
    sparse_file(image, size_mib * MIB)
    run(["mkfs.vfat", "-F", "32", "-n", "R2BTEST", image])
    with tempfile.TemporaryDirectory(prefix="r2b-fat-") as tmp:
        src = write_tree(Path(tmp) / "src", tree)
        for path, entry in sorted(tree.items()):
            if entry.kind == "dir":
                run(["mmd", "-i", image, f"::/{path}"], env=UTF8)
        for path, entry in sorted(tree.items()):
            if entry.kind == "file":
                run(["mcopy", "-m", "-i", image, src / path, f"::/{path}"], env=UTF8)
    return image


def fat_fragmented(image: Path, tree: dict[str, Expected], name: str, size: int) -> None:
    """Add ``name`` to the FAT ``image`` in pieces (fill, delete every other, copy)."""
    rng = random.Random(size)
    with tempfile.TemporaryDirectory(prefix="r2b-frag-") as tmp:
        run(["mmd", "-i", image, "::/frag"], env=UTF8)
        for i in range(48):
            filler = Path(tmp) / f"f{i:03d}"
            filler.write_bytes(rng.randbytes(4096))
            run(["mcopy", "-i", image, filler, f"::/frag/f{i:03d}"], env=UTF8)
            if i % 2:
                tree[f"frag/f{i:03d}"] = Expected("file", filler.read_bytes())
        for i in range(0, 48, 2):
            run(["mdel", "-i", image, f"::/frag/f{i:03d}"], env=UTF8)
        _fat32_search_from_start(image)
        data = rng.randbytes(size)
        source = Path(tmp) / "data"
        source.write_bytes(data)
        run(["mcopy", "-i", image, source, f"::/{name}"], env=UTF8)
    tree["frag"] = Expected("dir")
    tree[name] = Expected("file", data)


def _fat32_search_from_start(image: Path) -> None:
    """Set FAT32's FSInfo "next free cluster" hint to 2, so the next allocation starts from the
    beginning of the volume and fills the holes (mtools otherwise continues after the hint)."""
    with image.open("r+b") as f:
        boot = f.read(512)
        fsinfo = int.from_bytes(boot[48:50], "little") * int.from_bytes(boot[11:13], "little")
        f.seek(fsinfo + 492)
        f.write((2).to_bytes(4, "little"))


# --- NTFS ------------------------------------------------------------------------------------


def make_ntfs(image: Path, size_mib: int, tree: Mapping[str, Expected]) -> Path:
    """An NTFS image of ``tree``: mkntfs, then wimcapture + wimapply onto the image file."""
    sparse_file(image, 0)
    sparse_file(image, size_mib * MIB)
    run(["mkntfs", "-F", "-f", "-q", "-L", "R2BTEST", image])
    with tempfile.TemporaryDirectory(prefix="r2b-ntfs-") as tmp:
        src = write_tree(Path(tmp) / "src", tree)
        wim = Path(tmp) / "tree.wim"
        run(["wimcapture", src, wim, "--compress=none"])
        run(["wimapply", wim, image])
    return image


def ntfs_fragmented(image: Path, tree: dict[str, Expected], name: str, size: int) -> None:
    """Add ``name`` to the NTFS ``image`` in pieces: fill the volume with 256 KiB fillers until
    it is full, free every other filler, then ``ntfscp`` the file into the holes."""
    rng = random.Random(size)
    with tempfile.TemporaryDirectory(prefix="r2b-frag-") as tmp:
        filler = Path(tmp) / "filler"
        filler.write_bytes(b"z" * (256 << 10))
        count = 0
        while count < 4096:
            try:
                run(["ntfscp", image, filler, f"/fill{count:04d}"])
            except RuntimeError:
                break
            count += 1
        inodes = _ntfs_inodes(image)
        for i in range(0, count, 2):
            run(["ntfstruncate", "-f", image, str(inodes[f"fill{i:04d}"]), "0"])
        data = rng.randbytes(size)
        source = Path(tmp) / "data"
        source.write_bytes(data)
        run(["ntfscp", image, source, f"/{name}"])
        for filled in [n for n in _ntfs_inodes(image) if n.startswith("fill")]:
            tree[filled] = Expected("file", run(["ntfscat", image, f"/{filled}"]).stdout)
    tree[name] = Expected("file", data)


def _ntfs_inodes(image: Path) -> dict[str, int]:
    listing = run(["ntfsls", "-i", image]).stdout.decode(errors="replace")
    inodes = {}
    for line in listing.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            inodes[parts[1].strip()] = int(parts[0])
    return inodes


# --- GPT disk of several filesystems ----------------------------------------------------------


def place(disk: Path, offset: int, fs_image: Path) -> None:
    """Copy ``fs_image`` into ``disk`` at ``offset`` (skipping zeros: the disk stays sparse)."""
    with fs_image.open("rb") as src, disk.open("r+b") as dst:
        position = 0
        while chunk := src.read(MIB):
            if chunk.count(0) != len(chunk):
                dst.seek(offset + position)
                dst.write(chunk)
            position += len(chunk)


# --- a crafted filesystem -----------------------------------------------------------------------

# marker name in the source tree → what its directory entry says after patching (same length)
ESCAPES = {
    "AAAAAAAAAAAAAAAA": b"../../../../evil",
    "CCCCCCC": b"a/../..",
    "DDDD": b"\xff\xfe/x",
    "EEEEEEEEEEEEEEEEEEEEEEEE": b"/tmp/r2b-escape-absolute",
}


def make_escaping_ext4(image: Path) -> dict[str, Expected]:
    """An ext4 image whose entries try to leave the restore folder: names patched into
    ``../../../../evil``, ``a/../..``, a name with a ``/`` and non-UTF-8 bytes, a name with
    an absolute path, a name ``..`` for a file, and symlinks to ``/etc/passwd`` and far up.
    Returns the source tree (before patching)."""
    tree = {
        "AAAAAAAAAAAAAAAA": Expected("file", b"evil\n"),
        "CCCCCCC": Expected("file", b"slash\n"),
        "DDDD": Expected("file", b"odd\n"),
        "EEEEEEEEEEEEEEEEEEEEEEEE": Expected("file", b"absolute\n"),
        "Q9": Expected("file", b"dotdot\n"),
        "sub": Expected("dir"),
        "sub/fine.txt": Expected("file", b"fine\n"),
        "abs": Expected("symlink", target="/etc/passwd"),
        "sub/far-up": Expected("symlink", target="../../../../../../../../tmp/r2b-escape-link"),
        "sub/dir-up": Expected("symlink", target="../../../../.."),
    }
    make_ext4(image, 8, tree, features="^metadata_csum,^dir_index")
    data = bytearray(image.read_bytes())
    for marker, name in {**ESCAPES, "Q9": b".."}.items():
        # an ext4 directory entry: inode, rec_len, name_len, file_type, then the name
        key = bytes([len(marker), 1]) + marker.encode()
        at = data.find(key)
        assert at > 0 and data.find(key, at + 1) < 0, f"marker {marker} not unique"
        data[at + 2 : at + 2 + len(marker)] = name
    image.write_bytes(bytes(data))
    return tree


# --- backing a disk up, the short way --------------------------------------------------------


def data_extents(path: Path) -> list[tuple[int, int]]:
    """The data regions of a (sparse) file, from SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    out: list[tuple[int, int]] = []
    try:
        size, position = os.fstat(fd).st_size, 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            position = end
    finally:
        os.close(fd)
    return out


def backup_disks(settings: Any, name: str, images: list[Path]) -> Any:
    """Register ``images`` as machine ``name``'s disks, replicate them at a full checkpoint
    (with their data extents as the change-tracking hint, as a hypervisor would give, so a
    sparse multi-GiB disk costs what it holds) and build the backup; its ``Manifest``."""
    from r2b import ops
    from r2b.journal.replicator import CheckpointRequest, Replicator

    spec = ops.add_machine(settings, name, [str(p) for p in images])
    hints = {disk.id: data_extents(Path(disk.path)) for disk in spec.disks}
    Replicator(settings.open(), spec, settings.state_dir).cycle(
        hints, checkpoint=CheckpointRequest("full")
    )
    [built] = ops.backup(settings, name)
    return built.manifest
