"""What the flows publish on a real Prefect server: the backup artifact and the events
`r2b.backup.completed` and `r2b.verify.failed`."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from r2b import ops

pytestmark = pytest.mark.slow


def _events(name: str, since: datetime) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    window = EventOccurredFilter.model_validate(
        {"since": since, "until": datetime.now(UTC) + timedelta(minutes=1)}
    )
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:
            page = client.read_events(
                EventFilter(occurred=window, event=EventNameFilter(name=[name])), limit=50
            )
            if page.events or time.monotonic() > deadline:
                return list(page.events)
            time.sleep(0.5)


def test_backup_artifact_and_events(
    orchestrated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.backup import backup_flow, verify_flow
    from flows.replicate import checkpoint_flow
    from flows.runtime import run_flow

    since = datetime.now(UTC) - timedelta(seconds=5)
    monkeypatch.setenv("R2B_HOME", str(tmp_path / "home"))
    disk = tmp_path / "art1.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
        f.write(os.urandom(1 << 20))
    url = f"file://{tmp_path / 'store'}"
    ops.add_machine(ops.Settings(url, tmp_path / "home"), "art1", [str(disk)])
    run_flow(checkpoint_flow, "art1", "full", url)
    [built] = run_flow(backup_flow, "art1", None, url)

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["r2b-backup-art1"]))
        )
    assert artifacts, "no backup artifact"
    rows = artifacts[0].data
    assert isinstance(rows, (list, str)) and built.id in str(rows)
    assert "wan_bytes_saved" in str(rows)

    completed = _events("r2b.backup.completed", since)
    assert any(e.payload.get("id") == built.id for e in completed)

    pack = next((tmp_path / "store" / "chunks" / "packs").iterdir())
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    report = run_flow(verify_flow, [], url)
    assert report.corrupt
    failed = _events("r2b.verify.failed", since)
    assert failed and failed[-1].payload["corrupt"]
