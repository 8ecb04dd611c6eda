"""`r2b demo` (what `make demo` runs) tells the whole story and checks itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

R2B = str(Path(sys.executable).with_name("r2b"))


def test_the_demo_runs_end_to_end_and_saves_the_backup_wan_bytes(tmp_path: Path) -> None:
    env = {**os.environ, "R2B_HOME": str(tmp_path / "operator-home")}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.run(
        [R2B, "--json", "demo", "--keep", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)  # exactly one JSON document
    assert summary["ok"] is True
    assert summary["wan_bytes_for_backups"] == 0
    assert summary["wan_bytes_a_separate_backup_would_send"] > 1_000_000
    assert summary["failover_exact"] and summary["file_restored"] and summary["verify_clean"]
    if os.geteuid() == 0:  # the machine is loop-mounted: apps declared, the mail restores
        assert summary["mail_restored"] is True
    assert len(summary["backups"]) == 2
    # the demo kept to its own folder: the operator's catalog was not touched
    assert not (tmp_path / "operator-home").exists()
    restored = tmp_path / "demo" / "restored" / "home/alice/docs/report-03.txt"
    assert restored.is_file() and restored.stat().st_size > 1000
