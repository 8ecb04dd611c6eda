"""The checkpoint sequence with applications (patent FIG. 5A), around the filesystem freeze.

    pre-freeze hook → quiesce each application (PostgreSQL CHECKPOINT; SQLite WAL checkpoint
    and a write lock) → capture what each holds → write it to /.r2b/app-metadata.json on a
    protected filesystem, fsync → fsfreeze → (the replicator captures the changed blocks) →
    thaw → release the applications → post-thaw hook

Everything after a step that succeeded is undone whatever happens next (error, timeout,
Ctrl-C): the filesystems are thawed, the locks released, the post-thaw hook run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from r2b.apps import mail, postgres, sqlite
from r2b.apps.hooks import run_hook
from r2b.apps.specs import AppSpec, parse_app
from r2b.clock import Clock, iso, utc_now
from r2b.errors import QuiesceError
from r2b.quiesce import DEFAULT_MAX_FREEZE_S, FrozenWindow, Mount, freeze_filesystems

METADATA_DIR = ".r2b"
METADATA_NAME = "app-metadata.json"
METADATA_FORMAT = "r2b.app-metadata"


@dataclass(frozen=True)
class DiskMount:
    """A mounted filesystem of one of the machine's disks."""

    disk: str
    mount: Mount


@dataclass(frozen=True)
class AppPlan:
    apps: list[AppSpec] = field(default_factory=list)
    pre_freeze: str | None = None
    post_thaw: str | None = None
    hook_timeout_s: float | None = None  # None: hooks.DEFAULT_HOOK_TIMEOUT_S

    @staticmethod
    def of(apps: list[str], hooks: dict[str, str]) -> AppPlan:
        """From a machine registration: ``hooks`` has pre_freeze, post_thaw, timeout_s."""
        timeout = hooks.get("timeout_s")
        return AppPlan(
            [parse_app(a) for a in apps],
            hooks.get("pre_freeze"),
            hooks.get("post_thaw"),
            float(timeout) if timeout else None,
        )

    @property
    def declared(self) -> bool:
        return bool(self.apps or self.pre_freeze or self.post_thaw)


def locate(path: str, mounts: list[DiskMount]) -> dict[str, Any] | None:
    """Where a host path is inside the protected disks: disk, partition, path in the fs."""
    best: DiskMount | None = None
    for candidate in mounts:
        root = candidate.mount.mountpoint.rstrip("/") + "/"
        if (path + "/").startswith(root) and (
            best is None or len(candidate.mount.mountpoint) > len(best.mount.mountpoint)
        ):
            best = candidate
    if best is None:
        return None
    inside = "/" + os.path.relpath(path, best.mount.mountpoint).removeprefix(".")
    return {"disk": best.disk, "partition": best.mount.partition, "path": inside.replace("//", "/")}


def metadata_location(mounts: list[DiskMount]) -> dict[str, Any]:
    """Where the metadata file goes: the first protected filesystem."""
    if not mounts:
        raise QuiesceError(
            "applications",
            "no filesystem of the machine's disks is mounted here to hold the "
            "application metadata (mount it, or declare no applications)",
        )
    target = mounts[0]
    return {
        "disk": target.disk,
        "partition": target.mount.partition,
        "path": f"/{METADATA_DIR}/{METADATA_NAME}",
        "host_path": os.path.join(target.mount.mountpoint, METADATA_DIR, METADATA_NAME),
    }


def describe(app: AppSpec, mounts: list[DiskMount]) -> dict[str, Any]:
    """What ``app`` holds, with where its files are inside the protected disks."""
    if app.kind == "postgres":
        info = postgres.describe(app.target)
    elif app.kind == "sqlite":
        info = sqlite.describe(app.target)
    elif app.kind == "maildir":
        info = mail.describe_maildir(app.target)
    else:
        info = mail.describe_mbox(app.target)
    places = [locate(path, mounts) for path in info.get("files", [])]
    on_disk = [p for p in places if p is not None]
    if info.get("files") and not on_disk:
        # metadata about files the backup will not hold would promise what it cannot restore
        raise QuiesceError(
            str(app),
            "its files are not on a mounted filesystem of the "
            f"machine's disks: {', '.join(info['files'][:3])}",
        )
    return {"spec": str(app), "kind": app.kind, **info, "on_disk": on_disk}


def write_metadata(doc: dict[str, Any], host_path: str) -> None:
    folder = os.path.dirname(host_path)
    os.makedirs(folder, exist_ok=True)
    tmp = host_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, host_path)


@contextlib.contextmanager
def _quiesced(apps: list[AppSpec]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for app in apps:
            if app.kind == "postgres":
                stack.enter_context(postgres.checkpointed(app.target))
            elif app.kind == "sqlite":
                stack.enter_context(sqlite.hold_writers(app.target))
        yield


@contextlib.contextmanager
def _hooks(plan: AppPlan) -> Iterator[None]:
    if plan.pre_freeze:
        run_hook("pre-freeze", plan.pre_freeze, plan.hook_timeout_s)
    try:
        yield
    except BaseException as cause:
        if plan.post_thaw:
            try:
                run_hook("post-thaw", plan.post_thaw, plan.hook_timeout_s)
            except QuiesceError as failed:  # the cause is what the operator must see first
                cause.add_note(f"and then: {failed}")
        raise
    if plan.post_thaw:
        run_hook("post-thaw", plan.post_thaw, plan.hook_timeout_s)


@contextlib.contextmanager
def application_freeze(
    plan: AppPlan,
    mounts: list[DiskMount],
    checkpoint_hint: str,
    max_freeze_s: float = DEFAULT_MAX_FREEZE_S,
    clock: Clock = utc_now,
) -> Iterator[FrozenWindow]:
    """Hooks, quiesce, metadata onto the disk, freeze; yields the frozen window."""
    where = metadata_location(mounts) if plan.apps else None
    with _hooks(plan), _quiesced(plan.apps):
        if where is not None:
            doc = {
                "format": METADATA_FORMAT,
                "version": 1,
                "time": iso(clock()),
                "checkpoint": checkpoint_hint,
                "apps": [describe(app, mounts) for app in plan.apps],
            }
            write_metadata(doc, where["host_path"])
        points = [m.mount.mountpoint for m in mounts]
        with freeze_filesystems(points, max_freeze_s) as frozen:
            yield frozen
