"""``r2b ls``, ``r2b find`` and ``r2b restore file`` as a user runs them (../shared/CLI.md).

One story on the embedded store: a machine whose disk is GPT with ext4 and FAT32 partitions is
registered, checkpointed and backed up through the CLI (flows); then ``ls`` (the partitions,
a folder, a file), ``find`` (with ``--machine``), ``restore file`` (a file and a glob, JSON
with ``files``, ``bytes_written``, ``bytes_fetched``), and the expected errors, each one line
on stderr. ``ls`` and ``find`` are read-only: they import no Prefect and answer quickly.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.disks import make_gpt_disk
from tests.fsimages import make_ext4, make_fat32, place, sample_tree
from tests.test_cli_backup import R2B, cli_env, expect_error, expect_ok, finish, ok, start

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLI_LIMIT_S = 2.0  # like `machine list`: the target is well under that


def test_ls_find_and_restore_file_through_the_cli(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    env = cli_env(tmp_path / "home")
    ext, fat = sample_tree(21), sample_tree(22, sparse=False, links=False)
    disk = tmp_path / "web.img"
    parts = make_gpt_disk(disk, 80, [(32, "8300"), (40, "0700")])
    place(disk, parts[0][0], make_ext4(tmp_path / "e.img", 32, ext))
    place(disk, parts[1][0], make_fat32(tmp_path / "f.img", 40, fat))

    ok(env, "machine", "add", "web", "--disk", str(disk))
    ok(env, "checkpoint", "web", "--full")
    [built] = ok(env, "backup", "web")["backups"]
    assert built["files_indexed"] == len(ext) + len(fat) + 1  # + ext4's lost+found
    backup = built["id"]

    commands = {
        "top": ("ls", "web@latest"),
        "docs": ("ls", backup, "/p1/docs"),
        "one": ("ls", backup, "/p2/data/random.bin"),
        "find": ("find", "readme.txt"),
        "mine": ("find", "/p2/**/*.bin", "--machine", "web"),
        "none": ("find", "*.txt", "--machine", "nobody"),
        "ls-missing": ("ls", backup, "/p1/nope"),
        "no-backup": ("ls", "web.cp-000999"),
    }
    out = tmp_path / "restored"
    restore = ("restore", "file", backup, "/p1/docs/readme.txt", "/p2/**/*.bin", "--to", str(out))
    commands["restore"] = restore
    procs = {name: start(env, *args) for name, args in commands.items()}  # side by side
    done = {name: finish(proc) for name, proc in procs.items()}
    top = expect_ok(commands["top"], done["top"])
    assert [(r["path"], r["type"]) for r in top] == [("/p1", "dir"), ("/p2", "dir")]
    assert all(set(r) >= {"path", "type", "size", "mtime", "mode"} for r in top)
    docs = {r["path"]: r for r in expect_ok(commands["docs"], done["docs"])}
    assert docs["/p1/docs/tiny.txt"]["size"] == 3 and docs["/p1/docs/tiny.txt"]["mode"] == 0o600
    [one] = expect_ok(commands["one"], done["one"])
    assert (one["path"], one["size"]) == ("/p2/data/random.bin", len(fat["data/random.bin"].data))
    found = expect_ok(commands["find"], done["find"])
    assert [(r["backup"], r["path"]) for r in found] == [
        (backup, "/p1/docs/readme.txt"),
        (backup, "/p2/docs/readme.txt"),
    ]
    assert all(set(r) >= {"backup", "path", "size", "mtime"} for r in found)
    mine = expect_ok(commands["mine"], done["mine"])
    assert {r["path"] for r in mine} == {"/p2/data/random.bin", "/p2/docs/deep/er/still.bin"}
    assert expect_ok(commands["none"], done["none"]) == []
    expect_error(commands["ls-missing"], done["ls-missing"], "/p1/nope", backup)
    expect_error(commands["no-backup"], done["no-backup"], "web.cp-000999")

    restored = expect_ok(restore, done["restore"])
    assert restored["files"] == 3
    assert restored["bytes_written"] == sum(
        len(t.data)
        for t in (ext["docs/readme.txt"], fat["data/random.bin"], fat["docs/deep/er/still.bin"])
    )
    assert 0 < restored["bytes_fetched"] < 2 * restored["bytes_written"]
    assert (out / "p1/docs/readme.txt").read_bytes() == ext["docs/readme.txt"].data
    assert (out / "p2/data/random.bin").read_bytes() == fat["data/random.bin"].data

    missing = ("restore", "file", backup, "/p1/nope", "--to", str(tmp_path / "x"))
    overwrite = (*restore, "--overwrite")
    again = {args: start(env, *args) for args in (restore, missing, overwrite)}
    done_again = {args: finish(proc) for args, proc in again.items()}
    expect_error(restore, done_again[restore], "already exist", "--overwrite")
    expect_error(missing, done_again[missing], "/p1/nope")
    assert not (tmp_path / "x").exists()
    assert expect_ok(overwrite, done_again[overwrite])["files"] == 3

    times = []
    for _ in range(3):
        began = time.perf_counter()
        proc = subprocess.run([str(R2B), "find", "readme.txt"], env=env, capture_output=True)
        times.append(time.perf_counter() - began)
        assert proc.returncode == 0, proc.stderr
    median = statistics.median(times)
    record_property("r2b_find_median_s", round(median, 3))
    assert median < CLI_LIMIT_S, f"r2b find takes {median:.2f} s"

    script = textwrap.dedent(
        f"""
        import sys
        from typer.testing import CliRunner
        from cli.main import app
        for args in (["--json", "ls", {backup!r}, "/p1"], ["--json", "find", "*.txt"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, (result.output, result.exception)
        loaded = sorted(m for m in sys.modules if m.split(".")[0].startswith("prefect"))
        assert not loaded, f"ls/find imported {{loaded[:10]}}"
        """
    )
    check = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert R2B.exists()
