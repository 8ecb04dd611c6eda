"""The ``r2b`` command (contract in ../shared/CLI.md).

Commands that change something run the matching flow (``flows/``): as a Prefect flow run when
a Prefect API is configured, else in-process (``flows.runtime``). Read-only commands answer from
the store and catalog without importing Prefect, so they stay well under a second.
Expected errors (``R2BError``) end with one line on stderr and exit status 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.output import Output
from r2b.errors import R2BError
from r2b.ops import Settings

if TYPE_CHECKING:
    from r2b.journal.format import BackupType

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="r2b: backups built from the disaster-recovery replica.",
    pretty_exceptions_enable=False,
)
machine_app = typer.Typer(no_args_is_help=True, help="Protected machines.")
app.add_typer(machine_app, name="machine")
restore_app = typer.Typer(no_args_is_help=True, help="Restore disks, files and items.")
app.add_typer(restore_app, name="restore")


class State:
    settings: Settings
    out: Output


state = State()


@app.callback()
def main_options(
    store: Annotated[
        str | None, typer.Option("--store", help="file:///abs/path or s3://bucket/prefix")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show Prefect's logs.")] = False,
) -> None:
    state.settings = Settings.from_env(store)
    state.out = Output(json_mode=json_output, verbose=verbose)
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if state.settings.store_url.startswith("block:"):
        import blocks.store  # noqa: F401  (registers the block: scheme; needs Prefect)


def _reporting() -> Any:
    from r2b.progress import reporting

    return reporting(state.out.progress)


@machine_app.command("add")
def machine_add(
    name: str,
    disk: Annotated[list[str], typer.Option("--disk", help="Raw image file or block device.")],
    app_spec: Annotated[
        list[str] | None,
        typer.Option("--app", help="postgres:CONNINFO, sqlite:PATH, maildir:PATH, mbox:PATH"),
    ] = None,
    pre_freeze: Annotated[
        str | None, typer.Option("--pre-freeze", help="Command run before the freeze.")
    ] = None,
    post_thaw: Annotated[
        str | None, typer.Option("--post-thaw", help="Command run after the thaw.")
    ] = None,
    hook_timeout: Annotated[
        float | None, typer.Option("--hook-timeout", help="Seconds a hook may take (60).")
    ] = None,
) -> None:
    """Register a protected machine, its disks and its applications."""
    from flows.machines import register_machine_flow
    from flows.runtime import run_flow

    given = (("pre_freeze", pre_freeze), ("post_thaw", post_thaw), ("timeout_s", hook_timeout))
    hooks = {k: str(v) for k, v in given if v is not None}
    summary = run_flow(
        register_machine_flow, name, disk, app_spec or [], state.settings.store_url, hooks
    )
    doc = summary.model_dump()
    state.out.document(doc, f"registered {summary.name}: {', '.join(summary.disks)}")


@machine_app.command("list")
def machine_list() -> None:
    """List protected machines."""
    from r2b.ops import machines

    rows = [
        {"name": m.name, "disks": [d.path for d in m.disks], "apps": m.apps}
        for m in machines(state.settings)
    ]
    state.out.table(rows, rows, ["name", "disks", "apps"])


@app.command()
def replicate(
    name: str,
    watch: Annotated[
        float | None, typer.Option("--watch", help="Keep replicating every SECONDS.")
    ] = None,
    changed_extents: Annotated[
        Path | None,
        typer.Option(
            "--changed-extents",
            help='JSON {"disk0": [[offset, length], ...]} from change tracking: read only those.',
        ),
    ] = None,
) -> None:
    """One replication cycle (or one every --watch SECONDS until interrupted)."""
    from flows.replicate import replicate_flow
    from flows.runtime import run_flow, run_long_flow

    extents = _read_extents(changed_extents) if changed_extents else None
    runner = run_flow if watch is None else run_long_flow
    with _reporting():
        results = runner(replicate_flow, name, state.settings.store_url, watch, None, extents)
    last = results[-1]
    doc = last.model_dump()
    state.out.document(
        doc,
        f"cycle {last.seq}: {last.blocks_changed} blocks changed "
        f"({last.bytes_changed} bytes), {last.bytes_uploaded} bytes uploaded",
    )


def _read_extents(path: Path) -> dict[str, list[tuple[int, int]]]:
    import json

    from r2b.errors import BadInput

    try:
        doc = json.loads(path.read_text())
        return {str(disk): [(int(o), int(n)) for o, n in spans] for disk, spans in doc.items()}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise BadInput(
            f'{path}: not a changed-extents file ({{"disk0": [[offset, length], ...]}}): {e}'
        ) from None


@app.command()
def checkpoint(
    name: str,
    full: Annotated[bool, typer.Option("--full", help="Request a full backup.")] = False,
    incremental: Annotated[
        bool, typer.Option("--incremental", help="Request an incremental (default).")
    ] = False,
) -> None:
    """Request a backup: quiesce, replicate, mark a checkpoint, thaw."""
    from flows.replicate import checkpoint_flow
    from flows.runtime import run_flow

    if full and incremental:
        raise typer.BadParameter("choose one of --full and --incremental")
    kind: BackupType = "full" if full else "incremental"
    with _reporting():
        result = run_flow(checkpoint_flow, name, kind, state.settings.store_url)
    doc = result.model_dump()
    frozen = f", frozen {result.frozen_ms:.1f} ms" if result.frozen_ms is not None else ""
    frozen += f", {result.consistency}-consistent"
    state.out.document(
        doc,
        f"checkpoint {result.checkpoint} at cycle {result.seq} ({kind}): "
        f"{result.bytes_uploaded} bytes uploaded{frozen}",
    )


@app.command()
def failover(
    name: str,
    to: Annotated[Path, typer.Option("--to", help="Folder for the disk images.")],
    checkpoint_id: Annotated[
        str | None, typer.Option("--checkpoint", help="A checkpoint id (default: latest cycle).")
    ] = None,
) -> None:
    """Materialise each disk of the replica as an image file."""
    from flows.failover import failover_flow
    from flows.runtime import run_flow

    with _reporting():
        disks = run_flow(
            failover_flow, name, str(to.absolute()), checkpoint_id, state.settings.store_url
        )
    rows = [d.model_dump() for d in disks]
    state.out.table({"disks": rows}, rows, ["path", "sha256", "bytes_written"])


@app.command()
def backup(
    name: str,
    checkpoint_id: Annotated[
        str | None, typer.Option("--checkpoint", help="Default: every checkpoint not backed up.")
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the checkpoint to arrive.")
    ] = 0.0,
) -> None:
    """Back up from the replica at a checkpoint (run by the backup proxy)."""
    from flows.backup import backup_flow
    from flows.runtime import run_flow

    with _reporting():
        results = run_flow(backup_flow, name, checkpoint_id, state.settings.store_url, wait)
    rows = [r.model_dump() for r in results]
    if not rows:
        state.out.say(f"every checkpoint of {name} is backed up already")
    columns = ["id", "type", "checkpoint", "bytes_read", "bytes_stored", "files_indexed"]
    columns += ["items_indexed"] if any(r["items_indexed"] for r in rows) else []
    state.out.table({"backups": rows}, rows, columns)


@app.command("backups")
def list_backups_cmd(name: Annotated[str | None, typer.Argument()] = None) -> None:
    """List backups, newest last."""
    from r2b.ops import backups as list_all

    rows = [
        {
            "id": m.id,
            "machine": m.machine,
            "checkpoint": m.checkpoint,
            "type": m.type,
            "created": m.created,
            "disks": list(m.disks),
            "consistency": m.consistency,
        }
        for m in list_all(state.settings, name)
    ]
    state.out.table(rows, rows, ["id", "machine", "checkpoint", "type", "created", "disks"])


@restore_app.command("disk")
def restore_disk_cmd(
    backup_ref: Annotated[str, typer.Argument(metavar="BACKUP")],
    to: Annotated[Path, typer.Option("--to", help="Path of the disk image to write.")],
    disk: Annotated[str | None, typer.Option("--disk", help="Which disk of the machine.")] = None,
) -> None:
    """Restore a whole disk image, byte-identical to the disk at the checkpoint."""
    from flows.backup import restore_disk_flow
    from flows.runtime import run_flow

    with _reporting():
        image = run_flow(
            restore_disk_flow, backup_ref, str(to.absolute()), disk, state.settings.store_url
        )
    doc = image.model_dump()
    state.out.document(
        doc, f"restored {image.path}: {image.bytes_written} bytes, sha256 {image.sha256}"
    )


@app.command()
def verify(
    backup_refs: Annotated[list[str] | None, typer.Argument(metavar="[BACKUP]...")] = None,
) -> None:
    """Check every chunk the backups (default: all) reference against its digest."""
    from flows.backup import verify_flow
    from flows.runtime import run_flow

    with _reporting():
        report = run_flow(verify_flow, backup_refs or [], state.settings.store_url)
    doc = report.model_dump()
    lines = [f"{report.checked} chunks checked"]
    lines += [f"corrupt: {c['chunk']} (breaks {', '.join(c['backups'])})" for c in report.corrupt]
    lines += [f"missing: {c['chunk']} (breaks {', '.join(c['backups'])})" for c in report.missing]
    state.out.document(doc, "\n".join(lines))
    if report.corrupt or report.missing:
        raise typer.Exit(2)


@app.command()
def prune(
    keep_last: Annotated[int, typer.Option("--keep-last")] = 0,
    keep_daily: Annotated[int, typer.Option("--keep-daily")] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly")] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly")] = 0,
    keep_failover: Annotated[
        int, typer.Option("--keep-failover", help="Checkpoints the replica keeps for failover.")
    ] = 3,
) -> None:
    """Apply retention, then collect garbage (chunks no backup references)."""
    from flows.backup import prune_flow
    from flows.runtime import run_flow

    if not (keep_last or keep_daily or keep_weekly or keep_monthly):
        state.out.say("no --keep-* rule given: no backup is removed, only garbage is collected")
    result = run_flow(
        prune_flow,
        keep_last,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_failover,
        state.settings.store_url,
    )
    doc = result.model_dump()
    state.out.document(
        doc,
        f"removed {len(result.removed_backups)} backups, kept {len(result.kept_backups)}, "
        f"freed {result.bytes_freed} bytes",
    )


@app.command()
def demo(
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Run in this (empty) folder and keep it.")
    ] = None,
) -> None:
    """The whole story on an embedded store, explained as it goes."""
    from cli.demo import run_demo

    summary = run_demo(state.out, keep.absolute() if keep else None)
    saved = summary["wan_bytes_a_separate_backup_would_send"]
    state.out.document(
        summary,
        f"\n[bold]{'OK' if summary['ok'] else 'FAILED'}[/] in {summary['seconds']} s. "
        f"Replication sent {summary['wan_bytes_replication']:,} bytes for DR; the backups "
        f"added 0 WAN bytes, where a separate backup would have sent {saved:,} more.",
    )
    if not summary["ok"]:
        raise typer.Exit(1)


# --- the catalog: ls, find (read-only: no Prefect), restore file and item (flows) ------------


@app.command("ls")
def ls_cmd(
    backup_ref: Annotated[str, typer.Argument(metavar="BACKUP")],
    path: Annotated[str, typer.Argument(metavar="[PATH]")] = "/",
) -> None:
    """Browse a backup's files: the entries of folder PATH (default /: the partitions, or the
    root of a disk's only filesystem)."""
    from r2b.ops import ls

    rows = ls(state.settings, backup_ref, path)
    human = [{**r, "mode": _octal(r.get("mode")), "size": r.get("size")} for r in rows]
    state.out.table(rows, human, ["mode", "type", "size", "mtime", "path"])


@app.command("find")
def find_cmd(
    pattern: Annotated[str, typer.Argument(metavar="PATTERN")],
    machine: Annotated[
        str | None, typer.Option("--machine", help="Only this machine's backups.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most N results (0: all).")] = 10_000,
) -> None:
    """Search every backup of every machine: a glob on the name (no '/') or the whole path,
    and on application items: their name (mail:MESSAGE-ID, sqlite:PATH:TABLE,
    postgres:DATABASE[.SCHEMA.TABLE]; then only items), or a mail's Message-ID, subject or
    sender, or a table's name. Each file's versions are listed together, oldest first."""
    from r2b.ops import find

    rows = find(state.settings, pattern, machine, limit)
    if limit and len(rows) >= limit:
        state.out.say(f"showing the first {limit} matches; narrow PATTERN or raise --limit")
    human = [
        {**r, "path": r.get("path") or r.get("item"), "type": r.get("type") or r.get("kind")}
        for r in rows
    ]
    columns = ["backup", "path", "size", "mtime", "type"]
    if any(r.get("subject") for r in rows):
        columns.append("subject")
    state.out.table(rows, human, columns)


@restore_app.command("file")
def restore_file_cmd(
    backup_ref: Annotated[str, typer.Argument(metavar="BACKUP")],
    paths: Annotated[list[str], typer.Argument(metavar="PATH...")],
    to: Annotated[Path, typer.Option("--to", help="Folder to restore into.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace files that already exist.")
    ] = False,
) -> None:
    """Restore files or folders (globs allowed), reading only the chunks that hold them.
    /p2/etc/hosts lands in DIR/p2/etc/hosts."""
    from flows.backup import restore_files_flow
    from flows.runtime import run_flow

    with _reporting():
        result = run_flow(
            restore_files_flow,
            backup_ref,
            paths,
            str(to.absolute()),
            overwrite,
            state.settings.store_url,
        )
    doc = result.model_dump()
    lines = [
        f"restored {result.files} files, {result.dirs} folders, {result.symlinks} symlinks "
        f"({result.bytes_written} bytes) into {result.to}; fetched {result.bytes_fetched} "
        f"bytes ({result.chunks_fetched} chunks)"
    ]
    lines += [f"skipped {s['path']}: {s['reason']}" for s in result.skipped]
    state.out.document(doc, "\n".join(lines))


@restore_app.command("item")
def restore_item_cmd(
    backup_ref: Annotated[str, typer.Argument(metavar="BACKUP")],
    items: Annotated[list[str], typer.Argument(metavar="ITEM...")],
    to: Annotated[Path, typer.Option("--to", help="Folder to write the items into.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace files that already exist.")
    ] = False,
) -> None:
    """Restore application items: mail:MESSAGE-ID as an .eml file, sqlite:PATH:TABLE as SQL,
    postgres:DATABASE[.SCHEMA.TABLE] as pg_dump output (globs allowed)."""
    from flows.backup import restore_items_flow
    from flows.runtime import run_flow

    with _reporting():
        result = run_flow(
            restore_items_flow,
            backup_ref,
            items,
            str(to.absolute()),
            overwrite,
            state.settings.store_url,
        )
    doc = result.model_dump()
    lines = [f"{i['item']} -> {i['file']} ({i['bytes']} bytes)" for i in result.items]
    lines.append(
        f"restored {len(result.items)} items ({result.bytes_written} bytes) into {result.to}"
    )
    state.out.document(doc, "\n".join(lines))


def _octal(mode: object) -> str:
    return f"{mode:04o}" if isinstance(mode, int) else ""


def main() -> None:
    try:
        # standalone_mode=False returns an Exit's code instead of exiting: pass it on.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except R2BError as e:
        print(f"r2b: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("r2b: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors come here in non-standalone mode
        # Typer vendors its own copy of click, so test for the interface, not the class.
        show, exit_code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise


if __name__ == "__main__":
    main()
