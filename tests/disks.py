"""Real disk helpers for r2b's integration tests: ext4 images, GPT disks, loop mounts.

Everything here drives the real tools (mke2fs, debugfs, sgdisk, losetup, mount); nothing is
mocked. Each external command runs with ``subprocess.run(check=True, capture_output=True)``
through an absolute path found with ``shutil.which`` on ``PATH`` extended by /usr/sbin and
/sbin; any failure becomes a ``RuntimeError`` carrying the tool's output.

Determinism of ``make_ext4_image`` (the default, ``deterministic=True``): two calls with the
same arguments give byte-identical images. That takes

* a fixed filesystem UUID (``-U``) and directory hash seed (``-E hash_seed=``);
* ``E2FSPROGS_FAKE_TIME`` (read by libext2fs) for the superblock, lost+found and any inode
  debugfs creates;
* file modes and mtimes set on the temporary tree before ``mke2fs -d`` (which sorts the
  entries it copies, so the host's readdir order does not matter);
* a pass of ``debugfs sif`` afterwards, because ``mke2fs -d`` copies each inode's ctime and
  atime from the host's files, which no one can set.

``-E lazy_itable_init=0,lazy_journal_init=0`` makes mke2fs write the inode tables and the
journal in full, so a later mount does not start the kernel's ext4lazyinit thread, which
would zero inode tables in the background and change the image's bytes behind a test's back.

Worth knowing: ``mke2fs -d`` stores all-zero blocks of a file as holes (so an image can hold
a file bigger than itself if it is zeros), and every sgdisk write ends with ``sync()`` and a
hard-coded one-second sleep, so ``make_gpt_disk`` takes about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

MIB = 1024 * 1024
FIXED_EPOCH = 1_000_000_000  # 2001-09-09T01:46:40Z, the time stamped into deterministic images
FIXED_UUID = "0b2b0b2b-0000-4000-8000-000000000001"
FIXED_HASH_SEED = "0b2b0b2b-0000-4000-8000-000000000002"
_SEARCH_PATH = os.pathsep.join(p for p in (os.environ.get("PATH", ""), "/usr/sbin", "/sbin") if p)
_DEBUGFS_BANNER = re.compile(r"^debugfs \S+ \(.*\)$")
_TIME_FIELDS = ("atime", "ctime", "mtime", "crtime")
_COPY_CHUNK = MIB


# --- running tools -------------------------------------------------------------------------


def tool(name: str) -> str:
    """Return the absolute path of the external tool ``name`` or raise RuntimeError."""
    found = shutil.which(name, path=_SEARCH_PATH)
    if found is None:
        raise RuntimeError(f"{name}: not found on {_SEARCH_PATH} (apt-get install it)")
    return found


def run(
    args: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run tool ``args[0]`` (looked up with ``tool``) and return the completed process.

    ``env`` adds variables to the inherited environment. A non-zero exit becomes a
    RuntimeError with the command line, exit code, stderr and (some tools, like sgdisk, report
    errors there) stdout.
    """
    argv = [tool(str(args[0])), *(os.fspath(a) for a in args[1:])]
    full_env = {**os.environ, **env} if env else None
    try:
        return subprocess.run(argv, check=True, capture_output=True, env=full_env)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(_failure(argv, exc.returncode, exc.stderr, exc.stdout)) from exc


def _failure(argv: Sequence[str], code: int, stderr: bytes | None, stdout: bytes | None) -> str:
    """Format the message for a failed command."""
    err = (stderr or b"").decode(errors="replace").strip()
    out = (stdout or b"").decode(errors="replace").strip()[-2000:]
    return f"{' '.join(argv)} failed (exit {code}): stderr: {err or '-'}; stdout: {out or '-'}"


# --- file trees ----------------------------------------------------------------------------


def _relative(name: str) -> Path:
    """Check that ``name`` is a plain relative path inside a tree and return it."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or rel == Path("."):
        raise ValueError(f"not a relative path inside the tree: {name!r}")
    return rel


def make_tree(root: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (relative path -> content) under ``root``, creating directories."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        target = root / _relative(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _text(rng: random.Random, size: int) -> bytes:
    """Return ``size`` bytes of compressible, line-structured ASCII text."""
    words = ("replica", "snapshot", "block", "extent", "journal", "backup", "r2b", "inode")
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choice(words) for _ in range(8)) + "\n").encode()
    return bytes(out[:size])


def _mostly_zeros(rng: random.Random, size: int) -> bytes:
    """Return ``size`` bytes that are zero except for a few short random islands."""
    data = bytearray(size)
    for _ in range(min(4, size)):
        at = rng.randrange(size)
        island = rng.randbytes(min(64, size - at))
        data[at : at + len(island)] = island
    return bytes(data)


def sample_files(seed: int, count: int, max_size: int) -> dict[str, bytes]:
    """Return ``count`` deterministic sample files of 1..``max_size`` bytes each.

    The kinds cycle (so ``count >= 5`` has each): a text file, a random (incompressible)
    file, a mostly-zero sparse-ish file, a file in nested directories and a file with a
    non-ASCII name. The same arguments always give the same dict.
    """
    if count < 0 or max_size < 1:
        raise ValueError(f"need count >= 0 and max_size >= 1, got {count}, {max_size}")
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(count):
        size = rng.randint(1, max_size)
        kind = i % 5
        if kind == 0:
            files[f"text/notes_{i:03d}.txt"] = _text(rng, size)
        elif kind == 1:
            files[f"random/noise_{i:03d}.bin"] = rng.randbytes(size)
        elif kind == 2:
            files[f"sparse/zeros_{i:03d}.img"] = _mostly_zeros(rng, size)
        elif kind == 3:
            files[f"deep/a/b/c/nested_{i:03d}.dat"] = rng.randbytes(size)
        else:
            files[f"ünïcødé/日本語_ñandú_{i:03d}.txt"] = _text(rng, size)
    return files


def sparse_file(path: Path, size: int) -> Path:
    """Create (or replace) ``path`` as an all-zero sparse file of ``size`` bytes."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    with path.open("wb") as f:
        f.truncate(size)
    return path


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_region(source: Path, offset: int, length: int, dest: Path) -> Path:
    """Copy ``length`` bytes at ``offset`` of ``source`` into a new file ``dest``."""
    with source.open("rb") as src, dest.open("wb") as out:
        src.seek(offset)
        remaining = length
        while remaining:
            chunk = src.read(min(_COPY_CHUNK, remaining))
            if not chunk:
                raise RuntimeError(f"{source}: short read at {offset + length - remaining}")
            out.write(chunk)
            remaining -= len(chunk)
    return dest


# --- debugfs -------------------------------------------------------------------------------


def _quote(inside_path: str) -> str:
    """Quote a path inside the filesystem for a debugfs command line."""
    if not inside_path.startswith("/"):
        inside_path = "/" + inside_path
    if any(c in inside_path for c in '"\n\r\0'):
        raise ValueError(f"debugfs cannot take this path: {inside_path!r}")
    return f'"{inside_path}"'


def _debugfs_errors(stderr: bytes) -> list[str]:
    """Return debugfs's stderr lines other than its version banner."""
    lines = stderr.decode(errors="replace").splitlines()
    return [ln for ln in lines if ln.strip() and not _DEBUGFS_BANNER.match(ln)]


def debugfs(image: Path, *commands: str, write: bool = False) -> bytes:
    """Run debugfs ``commands`` on ``image`` and return stdout.

    debugfs exits 0 even when a command fails, so anything on stderr besides the banner is
    taken as failure. Several commands go through a temporary ``-f`` command file; writes
    run with ``E2FSPROGS_FAKE_TIME`` so new inodes get the fixed time stamp.
    """
    flags = ["-w"] if write else []
    env = {"E2FSPROGS_FAKE_TIME": str(FIXED_EPOCH)} if write else None
    with tempfile.TemporaryDirectory(prefix="r2b-debugfs-") as tmp:
        if len(commands) == 1:
            argv = ["debugfs", *flags, "-R", commands[0], str(image)]
        else:
            script = Path(tmp) / "commands"
            script.write_text("".join(c + "\n" for c in commands), encoding="utf-8")
            argv = ["debugfs", *flags, "-f", str(script), str(image)]
        proc = run(argv, env=env)
    if errors := _debugfs_errors(proc.stderr):
        raise RuntimeError(f"debugfs {' '.join(argv[1:])}: {'; '.join(errors)}")
    return proc.stdout


def debugfs_exists(image: Path, inside_path: str) -> bool:
    """Tell whether ``inside_path`` exists in the ext4 ``image``."""
    try:
        debugfs(image, f"stat {_quote(inside_path)}")
    except RuntimeError as exc:
        if "File not found" in str(exc):
            return False
        raise
    return True


def debugfs_read(image: Path, inside_path: str) -> bytes:
    """Return the content of the file ``inside_path`` in the ext4 ``image``."""
    return debugfs(image, f"cat {_quote(inside_path)}")


def debugfs_write(image: Path, inside_path: str, data: bytes) -> None:
    """Write ``data`` to ``inside_path`` in the (unmounted) ext4 ``image``.

    Missing parent directories are created; an existing file is removed first.
    """
    parts = [p for p in inside_path.split("/") if p]
    if not parts:
        raise ValueError(f"not a file path: {inside_path!r}")
    commands = []
    for depth in range(1, len(parts)):
        parent = "/" + "/".join(parts[:depth])
        if not debugfs_exists(image, parent):
            commands.append(f"mkdir {_quote(parent)}")
    full = "/" + "/".join(parts)
    target = _quote(full)
    if not commands and debugfs_exists(image, full):
        commands.append(f"rm {target}")
    with tempfile.TemporaryDirectory(prefix="r2b-debugfs-") as tmp:
        host = Path(tmp) / "data"
        host.write_bytes(data)
        commands.append(f'write "{host}" {target}')
        debugfs(image, *commands, write=True)


def _normalize_times(image: Path, inside_paths: Sequence[str]) -> None:
    """Set every time stamp of ``inside_paths`` (and of /) in ``image`` to FIXED_EPOCH."""
    commands = []
    for inside in ["/", *inside_paths]:
        quoted = _quote(inside)
        for field in _TIME_FIELDS:
            commands.append(f"sif {quoted} {field} @{FIXED_EPOCH}")
            commands.append(f"sif {quoted} {field}_extra 0")
    debugfs(image, *commands, write=True)


# --- ext4 images ---------------------------------------------------------------------------


def _tree_paths(files: Mapping[str, bytes]) -> list[str]:
    """Return every file and directory path (absolute inside the fs) of a tree, sorted."""
    paths: set[str] = set()
    for name in files:
        rel = _relative(name)
        paths.add("/" + rel.as_posix())
        paths.update("/" + p.as_posix() for p in rel.parents if p != Path("."))
    return sorted(paths)


def _pin_tree(root: Path) -> None:
    """Give every entry under ``root`` fixed modes (0644/0755) and time stamps."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (FIXED_EPOCH, FIXED_EPOCH))


def _mke2fs(
    path: Path, size: int, files: Mapping[str, bytes] | None, block_size: int, deterministic: bool
) -> None:
    """Create a fresh ``size``-byte file at ``path`` holding an ext4 fs with ``files``."""
    sparse_file(path, 0)
    sparse_file(path, size)
    extended = "lazy_itable_init=0,lazy_journal_init=0"
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(block_size)]
    if deterministic:
        argv += ["-U", FIXED_UUID]
        extended += f",hash_seed={FIXED_HASH_SEED}"
    argv += ["-E", extended]
    env = {"E2FSPROGS_FAKE_TIME": str(FIXED_EPOCH)} if deterministic else None
    with tempfile.TemporaryDirectory(prefix="r2b-tree-") as tmp:
        if files:
            tree = Path(tmp) / "tree"
            make_tree(tree, files)
            _pin_tree(tree)
            argv += ["-d", str(tree)]
        run([*argv, str(path)], env=env)
    if deterministic and files:
        _normalize_times(path, _tree_paths(files))


def make_ext4_image(
    path: Path,
    size_mib: int,
    files: Mapping[str, bytes] | None = None,
    block_size: int = 4096,
    *,
    deterministic: bool = True,
) -> Path:
    """Create ``path``: a ``size_mib`` MiB raw ext4 image holding ``files``.

    With ``deterministic`` (the default) equal arguments give byte-identical images; see the
    module docstring for how.
    """
    if size_mib < 1:
        raise ValueError(f"size_mib must be >= 1, got {size_mib}")
    _mke2fs(path, size_mib * MIB, files, block_size, deterministic)
    return path


def e2fsck(image: Path) -> str:
    """Run a forced read-only check (``e2fsck -fn``) of ``image``; return its report."""
    proc = run(["e2fsck", "-fn", str(image)])
    return (proc.stdout + proc.stderr).decode(errors="replace")


# --- GPT disks -----------------------------------------------------------------------------

_SECTOR_SIZE = re.compile(r"^Sector size \(logical\): (\d+) bytes", re.MULTILINE)
_TABLE_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+([0-9A-Fa-f]{4})\b", re.MULTILINE)


def gpt_partitions(disk: Path) -> list[tuple[int, int, str]]:
    """Return ``(byte_offset, byte_length, typecode)`` of each partition ``sgdisk -p`` lists."""
    text = run(["sgdisk", "-p", str(disk)]).stdout.decode(errors="replace")
    sector = _SECTOR_SIZE.search(text)
    if sector is None:
        raise RuntimeError(f"sgdisk -p {disk}: no sector size in output: {text}")
    unit = int(sector.group(1))
    rows = sorted(
        (int(n), int(a), int(b), code.upper()) for n, a, b, code in _TABLE_ROW.findall(text)
    )
    return [(a * unit, (b - a + 1) * unit, code) for _, a, b, code in rows]


def make_gpt_disk(
    path: Path, size_mib: int, partitions: Sequence[tuple[int, str]]
) -> list[tuple[int, int]]:
    """Create ``path``: a ``size_mib`` MiB zeroed raw disk with a fresh GPT.

    ``partitions`` lists ``(size_mib, typecode)`` (e.g. ``(8, "8300")``), laid out in order on
    sgdisk's 1 MiB alignment. Returns ``(byte_offset, byte_length)`` of each partition.
    """
    needed = 2 + sum(size for size, _ in partitions)  # 1 MiB alignment in front, GPT backup
    if size_mib < needed:
        raise ValueError(f"{size_mib} MiB is too small for {list(partitions)}: need {needed}")
    sparse_file(path, 0)
    sparse_file(path, size_mib * MIB)
    argv = ["sgdisk", "-o"]
    for number, (size, code) in enumerate(partitions, start=1):
        argv += ["-n", f"{number}:0:+{size}M", "-t", f"{number}:{code}"]
    run([*argv, str(path)])
    return [(offset, length) for offset, length, _ in gpt_partitions(path)]


def make_ext4_in_partition(
    disk: Path,
    offset: int,
    length: int,
    files: Mapping[str, bytes] | None = None,
    block_size: int = 4096,
) -> None:
    """Write a fresh (deterministic) ext4 filesystem with ``files`` over a region of ``disk``.

    mke2fs builds it in a temporary file of ``length`` bytes, which is then copied over
    ``disk[offset:offset+length]`` with ``os.pwrite`` (the whole region is overwritten).
    """
    if offset < 0 or length < MIB or offset + length > disk.stat().st_size:
        raise ValueError(f"region {offset}+{length} does not fit in {disk}")
    with tempfile.TemporaryDirectory(prefix="r2b-part-") as tmp:
        image = Path(tmp) / "fs.img"
        _mke2fs(image, length, files, block_size, deterministic=True)
        _copy_into(image, disk, offset)


def _copy_into(source: Path, disk: Path, offset: int) -> None:
    """Copy all of ``source`` into ``disk`` at ``offset`` with positioned writes."""
    fd = os.open(disk, os.O_WRONLY)
    try:
        with source.open("rb") as src:
            pos = offset
            while chunk := src.read(_COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(fd, view, pos)
                    view, pos = view[written:], pos + written
        os.fsync(fd)
    finally:
        os.close(fd)


# --- changing raw images -------------------------------------------------------------------


def random_change(image: Path, fraction: float, seed: int, granularity: int = 4096) -> int:
    """Change ``fraction`` of ``image``'s bytes in place; return the number of bytes changed.

    Picks ``round(fraction * chunks)`` distinct ``granularity``-aligned chunks (the last chunk
    may be short) and XORs each byte with random non-zero data, so every byte in a picked
    chunk really differs afterwards and the return value is exact. Deterministic in ``seed``.
    """
    if not 0.0 <= fraction <= 1.0 or granularity < 1:
        raise ValueError(f"need 0 <= fraction <= 1 and granularity >= 1: {fraction}, {granularity}")
    size = image.stat().st_size
    chunks = -(-size // granularity)
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(chunks), round(fraction * chunks)))
    changed = 0
    with image.open("r+b") as f:
        for index in picked:
            f.seek(index * granularity)
            old = f.read(granularity)
            noise = rng.randbytes(len(old)).replace(b"\0", b"\xff")
            new = int.from_bytes(old, "little") ^ int.from_bytes(noise, "little")
            f.seek(index * granularity)
            f.write(new.to_bytes(len(old), "little"))
            changed += len(old)
    return changed


# --- loop devices --------------------------------------------------------------------------


def can_loop_mount() -> bool:
    """Tell whether this process is root and losetup can find a free loop device."""
    if os.geteuid() != 0:
        return False
    try:
        run(["losetup", "--find"])
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def loop_attach(
    image: Path, *, offset: int = 0, sizelimit: int | None = None, read_only: bool = False
) -> Iterator[Path]:
    """Attach ``image`` (or a region of it) to a free loop device; yield ``/dev/loopN``.

    The device is detached on exit, also when the body raises.
    """
    argv = ["losetup", "--find", "--show"]
    if offset:
        argv += ["--offset", str(offset)]
    if sizelimit is not None:
        argv += ["--sizelimit", str(sizelimit)]
    if read_only:
        argv.append("--read-only")
    device = Path(run([*argv, str(image)]).stdout.decode().strip())
    try:
        yield device
    finally:
        run(["losetup", "-d", str(device)])


@contextlib.contextmanager
def loop_mount(
    image: Path,
    mountpoint: Path,
    *,
    offset: int = 0,
    sizelimit: int | None = None,
    read_only: bool = False,
) -> Iterator[Path]:
    """Loop-attach ``image`` and mount it as ext4 on ``mountpoint``; yield the mountpoint.

    On exit it is unmounted and the loop device detached, also when the body raises.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    with loop_attach(image, offset=offset, sizelimit=sizelimit, read_only=read_only) as dev:
        options = ["-o", "ro"] if read_only else []
        run(["mount", "-t", "ext4", *options, str(dev), str(mountpoint)])
        try:
            yield mountpoint
        finally:
            run(["umount", str(mountpoint)])
