"""Protected machines: their disks and applications, registered in the store.

``machines/<name>.json`` holds the registration, so that the backup proxy in the cloud knows a
machine's disks from the store alone. Registering the same machine again with the same disks is
a no-op; with different disks it is refused (a disk's identity and size are part of its replica).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from r2b.apps.specs import parse_app
from r2b.clock import Clock, iso, utc_now
from r2b.errors import BadInput, CorruptData, NotFound, UnknownMachine
from r2b.ids import DiskId, MachineName, disk_id, machine_name
from r2b.journal.format import DEFAULT_BLOCK_SIZE
from r2b.source.disk import probe_disk
from r2b.store.base import ObjectStore

MACHINE_FORMAT = "r2b.machine"
HOOK_KEYS = {"pre_freeze", "post_thaw", "timeout_s"}
MACHINE_VERSION = 1


@dataclass(frozen=True)
class DiskSpec:
    id: DiskId
    path: str
    size: int
    block_size: int = DEFAULT_BLOCK_SIZE


@dataclass(frozen=True)
class MachineSpec:
    name: MachineName
    disks: list[DiskSpec]
    apps: list[str] = field(default_factory=list)
    created: str = ""
    hooks: dict[str, str] = field(default_factory=dict)  # pre_freeze, post_thaw, timeout_s

    def disk(self, name: str | None) -> DiskSpec:
        """The disk called ``name`` (its id or its file name); the only one when ``None``."""
        if name is None:
            if len(self.disks) == 1:
                return self.disks[0]
            ids = ", ".join(d.id for d in self.disks)
            raise BadInput(f"machine {self.name} has several disks ({ids}): choose one with --disk")
        for disk in self.disks:
            if name in (disk.id, os.path.basename(disk.path)):
                return disk
        raise NotFound(f"{self.name}/{name}", "disk")


def machine_key(name: MachineName) -> str:
    return f"machines/{name}.json"


def register_machine(
    store: ObjectStore,
    name: str,
    disk_paths: list[str],
    apps: list[str] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    clock: Clock = utc_now,
    hooks: dict[str, str] | None = None,
) -> MachineSpec:
    machine = machine_name(name)
    for app in apps or []:
        parse_app(app)  # a bad spec fails now, not at the first checkpoint
    hooks = {k: str(v) for k, v in (hooks or {}).items() if v}
    if set(hooks) - HOOK_KEYS:
        raise BadInput(f"unknown hooks {sorted(set(hooks) - HOOK_KEYS)}")
    try:
        if float(hooks.get("timeout_s", 1)) <= 0:
            raise ValueError
    except ValueError:
        raise BadInput(f"hook timeout {hooks['timeout_s']!r} must be a positive number") from None
    if block_size < 4096 or block_size & (block_size - 1) or block_size > 4 << 20:
        raise BadInput(f"block size {block_size} must be a power of two from 4 KiB to 4 MiB")
    if not disk_paths:
        raise BadInput("a machine needs at least one --disk")
    disks = [
        DiskSpec(disk_id(f"disk{i}"), os.path.abspath(p), probe_disk(p), block_size)
        for i, p in enumerate(disk_paths)
    ]
    spec = MachineSpec(machine, disks, list(apps or []), iso(clock()), hooks)
    if store.put_if_absent(machine_key(machine), _to_json(spec)):
        return spec
    existing = load_machine(store, machine)
    if (existing.disks, existing.apps, existing.hooks) != (spec.disks, spec.apps, spec.hooks):
        raise BadInput(f"machine {machine} is already registered with other disks or applications")
    return existing


def load_machine(store: ObjectStore, name: str) -> MachineSpec:
    machine = machine_name(name)
    key = machine_key(machine)
    try:
        data = store.get(key)
    except NotFound:
        raise UnknownMachine(machine) from None
    return _from_json(data, key)


def list_machines(store: ObjectStore) -> list[MachineSpec]:
    return [_from_json(store.get(k), k) for k in store.list("machines/") if k.endswith(".json")]


def _to_json(spec: MachineSpec) -> bytes:
    doc = {"format": MACHINE_FORMAT, "version": MACHINE_VERSION, **asdict(spec)}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def _from_json(data: bytes, key: str) -> MachineSpec:
    try:
        doc = json.loads(data)
        if doc.get("format") != MACHINE_FORMAT or doc.get("version") != MACHINE_VERSION:
            raise ValueError("not a version-1 machine registration")
        return MachineSpec(
            name=MachineName(doc["name"]),
            disks=[DiskSpec(**d) for d in doc["disks"]],
            apps=list(doc.get("apps", [])),
            created=str(doc.get("created", "")),
            hooks=dict(doc.get("hooks", {})),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptData(f"machine registration {key} is unreadable: {e}") from e
