"""What flows publish for the Prefect UI: artifacts (only inside a real flow run)."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext

from tasks.summaries import BackupSummary


def publish_backups(backups: list[BackupSummary]) -> None:
    """A table of the images built, and the WAN bytes a separate backup would have sent.

    A separate backup product would have sent each image's new data over the WAN again; r2b
    built it in the cloud from the replica, so all of ``bytes_stored`` is WAN saved.
    """
    if FlowRunContext.get() is None or not backups:
        return
    rows = [
        {
            "backup": b.id,
            "type": b.type,
            "checkpoint": b.checkpoint,
            "bytes_read": b.bytes_read,
            "bytes_stored": b.bytes_stored,
            "bytes_deduplicated": b.bytes_deduplicated,
            "files_indexed": b.files_indexed,
            "items_indexed": b.items_indexed,
            "wan_bytes_sent_for_backup": 0,
            "wan_bytes_saved": b.bytes_stored,
        }
        for b in backups
    ]
    machine = backups[0].machine
    create_table_artifact(
        key=f"r2b-backup-{machine}".lower().replace(".", "-").replace("_", "-"),
        table=rows,
        description=f"Backups of {machine} built from the replica: no WAN bytes were sent for "
        f"them; a separate backup would have sent {sum(b.bytes_stored for b in backups):,} bytes.",
    )
