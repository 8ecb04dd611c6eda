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
    if "PREFECT_HOME" not in os.environ:
        prefect_home = state.settings.home / "prefect"
        prefect_home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(prefect_home)


def _reporting() -> Any:
    from r2b.progress import reporting

    return reporting(state.out.progress)


@machine_app.command("add")
def machine_add(
    name: str,
    disk: Annotated[list[str], typer.Option("--disk", help="Raw image file or block device.")],
    app_spec: Annotated[
        list[str] | None, typer.Option("--app", help="postgres:…, sqlite:PATH, maildir:PATH")
    ] = None,
) -> None:
    """Register a protected machine and its disks."""
    from flows.machines import register_machine_flow
    from flows.runtime import run_flow

    summary = run_flow(register_machine_flow, name, disk, app_spec or [], state.settings.store_url)
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
) -> None:
    """One replication cycle (or one every --watch SECONDS until interrupted)."""
    from flows.replicate import replicate_flow
    from flows.runtime import run_flow

    with _reporting():
        results = run_flow(replicate_flow, name, state.settings.store_url, watch)
    last = results[-1]
    doc = last.model_dump()
    state.out.document(
        doc,
        f"cycle {last.seq}: {last.blocks_changed} blocks changed "
        f"({last.bytes_changed} bytes), {last.bytes_uploaded} bytes uploaded",
    )


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


def main() -> None:
    try:
        app(standalone_mode=False)
    except R2BError as e:
        print(f"r2b: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("r2b: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # click usage errors come here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
