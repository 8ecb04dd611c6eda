"""Registering a protected machine."""

from __future__ import annotations

from prefect import flow

from flows.runtime import call
from r2b.ops import Settings
from tasks.replication import register_machine
from tasks.summaries import MachineSummary


@flow(name="register-machine")
def register_machine_flow(
    name: str,
    disks: list[str],
    apps: list[str] | None = None,
    store: str | None = None,
    hooks: dict[str, str] | None = None,
) -> MachineSummary:
    return call(register_machine, Settings.from_env(store), name, disks, apps or [], hooks or {})
