"""End to end on a real Prefect server: deploy from prefect.yaml, a worker on the backup
proxy's pool, a requested checkpoint, and the triggered backup run that builds the image.

Also: the r2b blocks register, save and open as ``block:NAME`` store URLs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from r2b import ops

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = pytest.mark.slow


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture
def proxy_env(orchestrated: str, tmp_path: Path) -> dict[str, str]:
    store = tmp_path / "store"
    return {
        **os.environ,
        "PREFECT_API_URL": orchestrated,
        "R2B_PROJECT_DIR": str(ROOT),
        "R2B_MACHINE": "web1",
        "R2B_STORE": f"file://{store}",
        "R2B_HOME": str(tmp_path / "proxy-home"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }


@pytest.fixture
def worker(proxy_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    for pool in ("r2b-replicator", "r2b-backup-proxy"):
        prefect_cli(proxy_env, "work-pool", "create", pool, "--type", "process", "--overwrite")
    prefect_cli(proxy_env, "deploy", "--all")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "r2b-backup-proxy", "--type", "process"],
        cwd=ROOT,
        env=proxy_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_checkpoint_triggers_the_proxy_which_builds_the_backup(
    worker: subprocess.Popen[bytes],
    proxy_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.replicate import checkpoint_flow
    from flows.runtime import run_flow

    disk = tmp_path / "web1.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(1 << 20))
    monkeypatch.setenv("R2B_HOME", str(tmp_path / "onprem-home"))
    settings = ops.Settings(proxy_env["R2B_STORE"], tmp_path / "onprem-home")
    ops.add_machine(settings, "web1", [str(disk)])
    source_sha = hashlib.sha256(disk.read_bytes()).hexdigest()

    mark = run_flow(checkpoint_flow, "web1", "full", settings.store_url)

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not ops.backups(settings, "web1"):
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        time.sleep(1)
    backups = ops.backups(settings, "web1")
    assert [b.checkpoint for b in backups] == [mark.checkpoint], (
        "no backup appeared; worker log:\n" + (tmp_path / "worker.log").read_text()[-3000:]
    )
    restored = ops.restore_disk(settings, backups[0].id, tmp_path / "restored.img")
    assert restored.sha256 == source_sha
    assert _deployment_run_state("backup-from-replica") == "COMPLETED"


def _deployment_run_state(deployment: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
            )
            state = runs[0].state.type.value if runs and runs[0].state else "NONE"
            if state == "COMPLETED" or time.monotonic() > deadline:
                return state
            time.sleep(1)


def test_blocks_register_save_and_open_as_a_store_url(
    orchestrated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "PREFECT_API_URL": orchestrated}
    out = prefect_cli(env, "block", "register", "-m", "blocks")
    assert "r2b" in out.lower()
    from blocks import BackupPolicy, R2BStore

    R2BStore(url=f"file://{tmp_path / 'store'}").save("test-store", overwrite=True)
    BackupPolicy(full_every=3).save("test-policy", overwrite=True)
    disk = tmp_path / "d.img"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
        f.write(b"hello" * 1000)
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("r2b")),
            "--store",
            "block:test-store",
            "--json",
            "machine",
            "add",
            "m1",
            "--disk",
            str(disk),
        ],
        env={**env, "R2B_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "store" / "machines" / "m1.json").exists()
    # the policy decides the type: full, then incremental until every 3rd
    from flows.replicate import checkpoint_flow
    from flows.runtime import run_flow

    monkeypatch.setenv("R2B_HOME", str(tmp_path / "home"))
    kinds = [
        run_flow(checkpoint_flow, "m1", "auto", "block:test-store", 7, "test-policy")
        for _ in range(4)
    ]
    store = R2BStore.load("test-store").open()  # type: ignore[union-attr]
    from r2b.journal.snapshot import Journal

    types = [c.checkpoint.type for c in Journal(store, "m1").checkpoints() if c.checkpoint]
    assert types == ["full", "incremental", "incremental", "full"]
    assert all(k.checkpoint for k in kinds)
