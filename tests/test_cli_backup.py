"""Backups through the ``r2b`` command, as a user runs it: a subprocess, its exit status,
one JSON document on stdout with ``--json``, one line on stderr for an error (../shared/CLI.md).

One story on the embedded store (``file://$R2B_HOME/store``): register a machine with a real
ext4 disk, a full checkpoint, a change, an incremental checkpoint, ``backup`` (both images),
``backups``, ``restore disk`` by id and by ``NAME@latest``, ``verify`` (clean), the expected
errors, ``prune --keep-last 1``, and ``verify`` again after a chunk pack was damaged. Each
command that runs a flow costs a few seconds (importing Prefect), so commands that do not
depend on each other run side by side.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from r2b.image.format import CHUNK_INDEX_PREFIX, chunk_pack_key, pack_of_index_key, read_table
from r2b.journal.snapshot import digest_column
from r2b.store import LocalStore
from tests.disks import MIB, debugfs_write, make_ext4_image, sample_files, sha256_file

pytestmark = pytest.mark.slow

R2B = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "r2b"
NAME = "web"


def cli_env(home: Path) -> dict[str, str]:
    """A user's shell: R2B_HOME set, sbin tools on PATH, no r2b/Prefect settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2B_", "PREFECT_"))}
    env["R2B_HOME"] = str(home)
    env["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return env


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(R2B), "--json", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def ok(env: dict[str, str], *args: str) -> Any:
    return expect_ok(args, finish(start(env, *args)))


def expect_ok(args: tuple[str, ...], done: tuple[int, str, str]) -> Any:
    code, out, err = done
    assert code == 0, f"r2b {' '.join(args)} failed ({code}):\n{err}"
    assert "Traceback" not in err
    return json.loads(out)  # exactly one JSON document


def expect_error(args: tuple[str, ...], done: tuple[int, str, str], *mentions: str) -> str:
    code, out, err = done
    assert code != 0, f"r2b {' '.join(args)} should have failed:\n{out}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{err}"
    assert out.strip() == ""
    for word in mentions:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return str(lines[0])


def run_side_by_side(env: dict[str, str], commands: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    procs = {name: start(env, *args) for name, args in commands.items()}
    return {name: finish(proc) for name, proc in procs.items()}


def flip_a_byte_of_a_chunk(store: LocalStore, wanted: set[bytes]) -> str:
    """Damage one raw chunk among ``wanted`` digests in its pack; return its digest (hex)."""
    for key in store.list(CHUNK_INDEX_PREFIX):
        table = read_table(store.get(key), key, "r2b.chunk.index")
        digests = digest_column(table)
        codecs = table.column("codec").to_pylist()
        for row, digest in enumerate(digests):
            if codecs[row] == 1 and digest.tobytes() in wanted:
                offset = table.column("offset")[row].as_py()
                length = table.column("length")[row].as_py()
                path = store.root / chunk_pack_key(pack_of_index_key(key))
                data = bytearray(path.read_bytes())
                data[offset + length // 2] ^= 0x5A
                path.write_bytes(bytes(data))
                return str(digest.tobytes().hex())
    raise AssertionError("no raw chunk to damage")


def image_digests(store: LocalStore, backup: str) -> set[bytes]:
    key = f"backups/{backup}/disk0.index.arrow"
    table = read_table(store.get(key), key, "r2b.image.index")
    zero = np.asarray(table.column("zero").to_numpy(zero_copy_only=False), dtype=bool)
    return {d.tobytes() for d in digest_column(table)[~zero]}


def test_backup_restore_verify_prune_through_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    image = make_ext4_image(
        tmp_path / "web.img", 32, sample_files(seed=12, count=20, max_size=200 * 1024)
    )

    added = ok(env, "machine", "add", NAME, "--disk", str(image))
    assert added["name"] == NAME
    cp1 = ok(env, "checkpoint", NAME, "--full")["checkpoint"]
    sha1 = sha256_file(image)
    debugfs_write(image, "/changed/after-cp1.bin", random.Random(3).randbytes(200 * 1024))
    cp2 = ok(env, "checkpoint", NAME, "--incremental")["checkpoint"]
    sha2 = sha256_file(image)
    assert sha1 != sha2

    # One `backup` builds every checkpoint not backed up yet, oldest first.
    built = ok(env, "backup", NAME)
    assert set(built) >= {"backups"}
    rows = built["backups"]
    assert [r["checkpoint"] for r in rows] == [cp1, cp2]
    assert [r["type"] for r in rows] == ["full", "incremental"]
    assert [r["id"] for r in rows] == [f"{NAME}.{cp1}", f"{NAME}.{cp2}"]
    for row in rows:
        assert {"id", "type", "checkpoint", "bytes_read", "bytes_stored", "files_indexed"} <= set(
            row
        )
        assert isinstance(row["files_indexed"], int) and row["files_indexed"] >= 0
    full, incr = rows
    assert 0 < incr["bytes_read"] < full["bytes_read"] // 2  # the incremental read the changes
    assert 0 < incr["bytes_stored"] < full["bytes_stored"]
    id1, id2 = full["id"], incr["id"]

    existing = tmp_path / "exists.img"
    existing.write_bytes(b"keep me")
    out1, out2 = tmp_path / "r1.img", tmp_path / "r2.img"
    commands = {
        "backups": ("backups",),
        "restore1": ("restore", "disk", id1, "--to", str(out1)),
        "latest": ("restore", "disk", f"{NAME}@latest", "--to", str(out2)),
        "verify": ("verify",),
        "unknown-id": ("restore", "disk", f"{NAME}.cp-999999", "--to", str(tmp_path / "x.img")),
        "onto-file": ("restore", "disk", id1, "--to", str(existing)),
        "unknown-machine": ("backup", "ghost"),
    }
    done = run_side_by_side(env, commands)

    listed = expect_ok(commands["backups"], done["backups"])
    assert [b["id"] for b in listed] == [id1, id2]
    for b, cp, kind in zip(listed, [cp1, cp2], ["full", "incremental"], strict=True):
        assert {"id", "machine", "checkpoint", "type", "created", "disks"} <= set(b)
        assert (b["machine"], b["checkpoint"], b["type"], b["disks"]) == (NAME, cp, kind, ["disk0"])
        assert b["created"]

    restored = expect_ok(commands["restore1"], done["restore1"])
    assert restored["sha256"] == sha1 == sha256_file(out1)
    assert restored["bytes_written"] == 32 * MIB
    latest = expect_ok(commands["latest"], done["latest"])
    assert latest["sha256"] == sha2 == sha256_file(out2)

    clean = expect_ok(commands["verify"], done["verify"])
    assert clean["checked"] > 0 and clean["corrupt"] == [] and clean["missing"] == []

    expect_error(commands["unknown-id"], done["unknown-id"], f"{NAME}.cp-999999")
    assert not (tmp_path / "x.img").exists()
    expect_error(commands["onto-file"], done["onto-file"], str(existing))
    assert existing.read_bytes() == b"keep me"
    assert not existing.with_name("exists.img.partial").exists()
    expect_error(commands["unknown-machine"], done["unknown-machine"], "ghost")

    # Retention: keep the newest backup only.
    pruned = ok(env, "prune", "--keep-last", "1")
    assert pruned["removed_backups"] == [id1]
    assert pruned["bytes_freed"] > 0
    assert [b["id"] for b in ok(env, "backups")] == [id2]

    # Damage a chunk the kept backup needs: verify names it and fails.
    store = LocalStore(home / "store")
    bad = flip_a_byte_of_a_chunk(store, image_digests(store, id2))
    args = ("verify",)
    code, out, err = finish(start(env, *args))
    assert "Traceback" not in err
    report = json.loads(out)
    assert report["corrupt"] == [{"chunk": bad, "backups": [id2]}]
    assert report["missing"] == []
    assert code != 0, f"verify found damage but exited {code}"
