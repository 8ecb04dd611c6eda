"""Finding backups in the store: every manifest is one backup."""

from __future__ import annotations

from r2b.errors import BadInput, NotFound
from r2b.ids import BackupId
from r2b.image.format import BACKUPS_PREFIX, Manifest, manifest_key
from r2b.store.base import ObjectStore


def list_backups(store: ObjectStore, machine: str | None = None) -> list[Manifest]:
    """Every backup (of ``machine``), oldest first (by checkpoint)."""
    found = []
    for key in store.list(BACKUPS_PREFIX):
        if key.endswith("/manifest.json"):
            manifest = Manifest.from_json(store.get(key), key)
            if machine is None or manifest.machine == machine:
                found.append(manifest)
    return sorted(found, key=lambda m: (m.machine, m.seq))


def load_backup(store: ObjectStore, ref: str) -> Manifest:
    """A backup by id, or ``NAME@latest`` for a machine's newest."""
    if ref.endswith("@latest"):
        machine = ref.removesuffix("@latest")
        backups = list_backups(store, machine)
        if not backups:
            raise NotFound(f"{machine}@latest", "backup")
        return backups[-1]
    if "/" in ref or not ref:
        raise BadInput(f"invalid backup id {ref!r}")
    key = manifest_key(BackupId(ref))
    try:
        return Manifest.from_json(store.get(key), key)
    except NotFound:
        raise NotFound(ref, "backup") from None
