"""Store locks: backups (shared) and prune (exclusive) exclude each other.

Garbage collection deletes chunks no manifest references; a backup running at the same time
may just have decided to reuse such a chunk (deduplication) without having written its manifest
yet. So collection takes an *exclusive* lock that no *shared* (backup) lock may overlap, as in
restic. A lock is an object ``locks/<kind>-<id>.json`` with its holder (host, pid) and time; it is
stale — ignored, and removed by the next prune — when it is older than ``STALE_AFTER``, or when
it was taken on this host by a process that no longer exists (as restic does).
Taking a lock is two-phase: write it, then look for conflicting ones; on conflict remove ours
and fail. Two racing processes may then both fail, never both proceed.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from r2b.clock import Clock, iso, utc_now
from r2b.errors import NotFound, StoreLocked
from r2b.store.base import ObjectStore

STALE_AFTER = timedelta(hours=6)
PREFIX = "locks/"


def _live_locks(store: ObjectStore, now: datetime) -> Iterator[tuple[str, str]]:
    """(key, holder) of locks that are not stale."""
    for key in store.list(PREFIX):
        try:
            doc = json.loads(store.get(key))
            taken = datetime.fromisoformat(doc["time"])
        except (NotFound, ValueError, KeyError):
            continue
        if now - taken < STALE_AFTER and not _dead_here(doc):
            yield key, str(doc.get("holder", "?"))


def _dead_here(doc: dict[str, object]) -> bool:
    """Whether the lock was taken on this host by a process that is gone."""
    pid = doc.get("pid")
    if doc.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stale_locks(store: ObjectStore, clock: Clock = utc_now) -> list[str]:
    live = {k for k, _ in _live_locks(store, clock())}
    return [k for k in store.list(PREFIX) if k not in live]


@contextmanager
def store_lock(
    store: ObjectStore, kind: str, what: str, exclusive: bool, clock: Clock = utc_now
) -> Iterator[None]:
    key = f"{PREFIX}{kind}-{uuid.uuid4().hex[:12]}.json"
    holder = f"{what} (pid {os.getpid()} on {socket.gethostname()})"
    doc = {
        "kind": kind,
        "exclusive": exclusive,
        "holder": holder,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": iso(clock()),
    }
    store.put(key, json.dumps(doc).encode())
    try:
        for other, other_holder in _live_locks(store, clock()):
            if other == key:
                continue
            other_exclusive = other.removeprefix(PREFIX).startswith("prune-")
            if exclusive or other_exclusive:
                raise StoreLocked(other_holder, what)
        yield
    finally:
        store.delete(key)
