"""The ``r2b`` command as a user runs it: a subprocess, its exit status, stdout and stderr.

The contract is ../shared/CLI.md: ``--json`` prints exactly one JSON document on stdout with
the listed fields; any error is one line on stderr (no traceback) with a non-zero exit, and a
failed command leaves nothing half-written behind. Each run of a command that starts a flow
costs about two seconds (importing Prefect), so the error cases share one prepared machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from r2b import ops
from r2b.ids import MachineName
from r2b.journal.snapshot import Journal
from tests.disks import (
    MIB,
    debugfs_read,
    debugfs_write,
    make_ext4_image,
    sample_files,
    sha256_file,
)
from tests.s3server import S3Server, free_port

R2B = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "r2b"
# Distinctive credentials, so that a leak into any message would be found.
ACCESS_KEY = "AKIAR2BCLITEST7Q4Z2X"
SECRET_KEY = "r2bCliSecret/DoNotPrint+9f3Kq0Zt8Wm2Lx5Vb7Nc"


# --- running the command -------------------------------------------------------------------


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: R2B_HOME, tools on PATH, credentials in AWS_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2B_", "PREFECT_", "AWS_"))}
    env.update(
        R2B_HOME=str(home),
        PATH=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]),
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


def r2b(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(R2B), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def assert_no_secrets(proc: subprocess.CompletedProcess[str]) -> None:
    for secret in (ACCESS_KEY, SECRET_KEY):
        assert secret not in proc.stderr
        assert secret not in proc.stdout


def ok_json(env: dict[str, str], *args: str) -> Any:
    """Run ``r2b --json ARGS``; it must succeed and print exactly one JSON document."""
    proc = r2b(env, "--json", *args)
    assert proc.returncode == 0, f"r2b {' '.join(args)} failed:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert_no_secrets(proc)
    return json.loads(proc.stdout)  # raises on anything but one document (and whitespace)


def fails(env: dict[str, str], *args: str, mentions: Sequence[str] = ()) -> str:
    """Run ``r2b --json ARGS``; it must fail with one line on stderr and nothing on stdout."""
    proc = r2b(env, "--json", *args)
    assert proc.returncode != 0, f"r2b {' '.join(args)} should fail:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    line = lines[0]
    for word in mentions:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    assert proc.stdout.strip() == "", proc.stdout
    assert_no_secrets(proc)
    return line


def tree(root: Path) -> dict[str, int]:
    """Every file below ``root`` with its size (to show a failed command wrote nothing)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


# --- the story, every contract field -------------------------------------------------------


def test_machine_replicate_checkpoint_failover(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    image = make_ext4_image(
        tmp_path / "web1.img", 16, sample_files(seed=1, count=6, max_size=64_000)
    )

    added = ok_json(env, "machine", "add", "web1", "--disk", str(image))
    assert added["name"] == "web1"
    assert added["disks"] == [str(image)]

    listed = ok_json(env, "machine", "list")
    assert isinstance(listed, list) and len(listed) == 1
    assert listed[0]["name"] == "web1" and listed[0]["disks"] == [str(image)]

    first = ok_json(env, "replicate", "web1")
    assert first["seq"] == 1
    assert isinstance(first["blocks_changed"], int) and first["blocks_changed"] > 0
    assert isinstance(first["bytes_uploaded"], int) and first["bytes_uploaded"] > 0

    debugfs_write(image, "/etc/motd", b"checkpointed\n")
    mark = ok_json(env, "checkpoint", "web1", "--full")
    assert isinstance(mark["checkpoint"], str) and mark["checkpoint"].startswith("cp-")
    assert isinstance(mark["seq"], int) and mark["seq"] > first["seq"]
    assert isinstance(mark["bytes_uploaded"], int) and mark["bytes_uploaded"] > 0
    assert "frozen_ms" in mark  # nothing is mounted here: no freeze happened
    at_mark = sha256_file(image)

    debugfs_write(image, "/etc/motd", b"changed after the checkpoint\n")
    later = ok_json(env, "replicate", "web1")
    assert later["seq"] == mark["seq"] + 1 and later["blocks_changed"] > 0

    at_cp = ok_json(
        env, "failover", "web1", "--to", str(tmp_path / "fo-cp"), "--checkpoint", mark["checkpoint"]
    )
    [disk] = at_cp["disks"]
    assert disk["path"] == str(tmp_path / "fo-cp" / "disk0.img")
    assert disk["sha256"] == at_mark == sha256_file(Path(disk["path"]))
    assert debugfs_read(Path(disk["path"]), "/etc/motd") == b"checkpointed\n"

    latest = ok_json(env, "failover", "web1", "--to", str(tmp_path / "fo-latest"))
    [disk] = latest["disks"]
    assert disk["sha256"] == sha256_file(image) == sha256_file(Path(disk["path"]))

    # Without --json: a table for a person, still exit 0 and nothing on stderr but progress.
    human = r2b(env, "machine", "list")
    assert human.returncode == 0 and "web1" in human.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(human.stdout)


# --- errors: one line, non-zero, nothing half-written --------------------------------------


@dataclass
class Prepared:
    home: Path
    env: dict[str, str]
    image: Path
    checkpoint: str

    @property
    def store(self) -> Path:
        return self.home / "store"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """A machine "web1" registered, replicated and checkpointed (set up through ``ops``, which
    is what the CLI runs; the story test above covers the same steps through the CLI)."""
    root = tmp_path_factory.mktemp("cli")
    home = root / "home"
    settings = ops.Settings(f"file://{home / 'store'}", home)
    image = make_ext4_image(root / "web1.img", 16, sample_files(seed=2, count=5, max_size=32_000))
    ops.add_machine(settings, "web1", [str(image)])
    ops.replicate(settings, "web1")
    mark = ops.checkpoint(settings, "web1", "full")
    assert mark.checkpoint is not None
    return Prepared(home, cli_env(home), image, mark.checkpoint)


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda p: p.mkdir() or p, "directory", id="a-directory"),
        pytest.param(lambda p: p, "no such file", id="a-missing-file"),
        pytest.param(empty_file, "empty", id="an-empty-file"),
    ],
)
def test_machine_add_refuses_what_is_not_a_disk(
    prepared: Prepared, tmp_path: Path, make: Any, reason: str
) -> None:
    path = make(tmp_path / "notadisk")
    before = tree(prepared.store)
    line = fails(prepared.env, "machine", "add", "bad1", "--disk", str(path), mentions=[reason])
    assert str(path) in line
    assert tree(prepared.store) == before  # no registration, not even a partial one


def test_replicate_refuses_a_disk_that_changed_size(prepared: Prepared, tmp_path: Path) -> None:
    image = make_ext4_image(tmp_path / "sizer.img", 16)
    settings = ops.Settings(f"file://{prepared.store}", prepared.home)
    ops.add_machine(settings, "sizer", [str(image)])
    ops.replicate(settings, "sizer")
    journal = Journal(settings.open(), MachineName("sizer"))
    assert [c.seq for c in journal.commits()] == [1]
    before = tree(prepared.store)

    os.truncate(image, 20 * MIB)
    fails(prepared.env, "replicate", "sizer", mentions=["grew", str(16 * MIB), str(20 * MIB)])
    os.truncate(image, 8 * MIB)
    fails(prepared.env, "replicate", "sizer", mentions=["shrank", str(8 * MIB)])

    assert tree(prepared.store) == before  # not a pack, not an index, not a commit
    assert [c.seq for c in Journal(settings.open(), MachineName("sizer")).commits()] == [1]


def test_unreachable_store(prepared: Prepared) -> None:
    env = cli_env(prepared.home, R2B_S3_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    store = "s3://r2b-bucket/site-a"
    fails(env, "--store", store, "machine", "list", mentions=["unreachable", "s3://r2b-bucket"])
    fails(env, "--store", store, "replicate", "web1", mentions=["unreachable"])


def test_bucket_that_does_not_exist(prepared: Prepared, s3_server: S3Server) -> None:
    env = cli_env(prepared.home, R2B_S3_ENDPOINT=s3_server.endpoint_url)
    store = "s3://r2b-no-such-bucket-4242/site-a"
    fails(env, "--store", store, "machine", "list", mentions=["r2b-no-such-bucket-4242"])
    line = fails(
        env,
        "--store",
        store,
        "machine",
        "add",
        "web1",
        "--disk",
        str(prepared.image),
        mentions=["r2b-no-such-bucket-4242"],
    )
    assert "does not exist" in line


def test_unknown_machine(prepared: Prepared) -> None:
    before = tree(prepared.store)
    fails(prepared.env, "replicate", "ghost", mentions=["ghost", "machine"])
    assert tree(prepared.store) == before


@pytest.mark.parametrize(
    ("checkpoint", "mentions"),
    [
        pytest.param("cp-000099", ["cp-000099", "not found"], id="unknown"),
        pytest.param("yesterday", ["yesterday", "checkpoint"], id="malformed"),
    ],
)
def test_failover_at_an_unknown_checkpoint(
    prepared: Prepared, tmp_path: Path, checkpoint: str, mentions: list[str]
) -> None:
    dest = tmp_path / "fo"
    fails(
        prepared.env,
        "failover",
        "web1",
        "--to",
        str(dest),
        "--checkpoint",
        checkpoint,
        mentions=mentions,
    )
    assert tree(dest) == {}


def test_failover_into_a_folder_that_holds_an_image(prepared: Prepared, tmp_path: Path) -> None:
    dest = tmp_path / "fo"
    dest.mkdir()
    (dest / "disk0.img").write_bytes(b"precious, not to be overwritten")
    line = fails(
        prepared.env,
        "failover",
        "web1",
        "--to",
        str(dest),
        "--checkpoint",
        prepared.checkpoint,
        mentions=["exists"],
    )
    assert "disk0.img" in line
    assert tree(dest) == {"disk0.img": len(b"precious, not to be overwritten")}
    assert (dest / "disk0.img").read_bytes() == b"precious, not to be overwritten"


def test_usage_errors_are_reported_without_a_traceback(tmp_path: Path) -> None:
    for args in (["find", "a", "b"], ["no-such-command"], ["replicate"]):
        run = subprocess.run(
            [str(R2B), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "R2B_HOME": str(tmp_path)},
        )
        assert run.returncode == 2, (args, run.stderr)
        assert "Traceback" not in run.stderr and "Error:" in run.stderr, run.stderr


def test_replicate_with_changed_extents_from_change_tracking(tmp_path: Path) -> None:
    """Extents handed in (as a hypervisor's change tracking would) narrow what is read."""
    disk = tmp_path / "cbt.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    env = {**os.environ, "R2B_HOME": str(tmp_path / "home")}

    def r2b(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(R2B), "--json", *args], env=env, capture_output=True, text=True)

    assert r2b("machine", "add", "cbt", "--disk", str(disk)).returncode == 0
    assert r2b("replicate", "cbt").returncode == 0
    with open(disk, "r+b") as f:
        f.seek(1 << 20)
        f.write(os.urandom(10_000))  # inside the extent handed in
        f.seek(5 << 20)
        f.write(os.urandom(10_000))  # outside it: not read this cycle
    extents = tmp_path / "extents.json"
    extents.write_text(json.dumps({"disk0": [[1 << 20, 10_000]]}))
    run = r2b("replicate", "cbt", "--changed-extents", str(extents))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["blocks_changed"] == 1
    extents.write_text("{not json")
    bad = r2b("replicate", "cbt", "--changed-extents", str(extents))
    assert bad.returncode == 1 and "not a changed-extents file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
