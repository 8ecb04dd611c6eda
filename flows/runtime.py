"""Running flows either as real Prefect flow runs or in-process without a server.

With a Prefect API configured (``PREFECT_API_URL`` in the environment or in the active Prefect
profile, or ``R2B_PREFECT=1`` for an ephemeral server), each command is an ad-hoc flow run,
visible in the UI. Without one, starting Prefect's ephemeral server costs 8-17 s per process
here, so r2b runs the same flow body in-process: ``call`` runs a task's function directly when
there is no flow run around it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Flow, Task
from prefect.context import FlowRunContext

P = ParamSpec("P")
R = TypeVar("R")


def _profile_api_url() -> str | None:
    """PREFECT_API_URL of the active profile in $PREFECT_HOME/profiles.toml, without Prefect."""
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    try:
        doc = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or doc.get("active", "ephemeral")
    value = doc.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(value) if value else None


def orchestrated() -> bool:
    """Whether commands run as Prefect flow runs (a Prefect API is configured)."""
    if os.environ.get("R2B_PREFECT") == "1" or os.environ.get("PREFECT_API_URL"):
        return True
    return _profile_api_url() is not None


def call(task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``task`` as a task run inside a flow run, or as a plain call outside one."""
    if FlowRunContext.get() is not None:
        return task(*args, **kwargs)
    return task.fn(*args, **kwargs)


def run_flow(flow: Flow[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a short flow: as a flow run without the run heartbeat when orchestrated.

    The heartbeat detects crashed runs, but the engine waits up to a second for its thread
    when the flow ends: that second is most of an ad-hoc command's overhead (measured +1.1 s
    with it, +0.2-0.4 s without). Long-running flows use ``run_long_flow``.
    """
    if not orchestrated():
        return flow.fn(*args, **kwargs)
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        return flow(*args, **kwargs)


def run_long_flow(flow: Flow[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a long flow (``replicate --watch``), keeping the heartbeat that detects crashes."""
    if orchestrated():
        return flow(*args, **kwargs)
    return flow.fn(*args, **kwargs)


def emit(event: str, resource_id: str, payload: dict[str, Any]) -> None:
    """Emit a Prefect event when orchestrated (a trigger may be waiting for it)."""
    if not orchestrated():
        return
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": resource_id}, payload=payload)


__all__ = ["call", "emit", "orchestrated", "run_flow", "run_long_flow"]
