"""Running flows either as real Prefect flow runs or in-process without a server.

With a Prefect API configured (``PREFECT_API_URL``, or ``R2B_PREFECT=1`` for an ephemeral
server), each command is an ad-hoc flow run, visible in the UI. Without one, starting Prefect's
ephemeral server costs 8-17 s per process here, so r2b runs the same flow body in-process:
``call`` runs a task's function directly when there is no flow run around it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Flow, Task
from prefect.context import FlowRunContext

P = ParamSpec("P")
R = TypeVar("R")


def orchestrated() -> bool:
    """Whether commands run as Prefect flow runs (a Prefect API is configured)."""
    return bool(os.environ.get("PREFECT_API_URL")) or os.environ.get("R2B_PREFECT") == "1"


def call(task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``task`` as a task run inside a flow run, or as a plain call outside one."""
    if FlowRunContext.get() is not None:
        return task(*args, **kwargs)
    return task.fn(*args, **kwargs)


def run_flow(flow: Flow[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    if orchestrated():
        return flow(*args, **kwargs)
    return flow.fn(*args, **kwargs)


def emit(event: str, resource_id: str, payload: dict[str, Any]) -> None:
    """Emit a Prefect event when orchestrated (a trigger may be waiting for it)."""
    if not orchestrated():
        return
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": resource_id}, payload=payload)


__all__ = ["Callable", "call", "emit", "orchestrated", "run_flow"]
