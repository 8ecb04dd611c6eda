"""Store locks: a lock of a process that died on this host does not block."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from r2b.clock import iso, utc_now
from r2b.errors import StoreLocked
from r2b.locks import store_lock
from r2b.store import LocalStore


def lock_doc(pid: int) -> bytes:
    doc = {
        "kind": "backup",
        "exclusive": False,
        "holder": f"backup x (pid {pid})",
        "host": socket.gethostname(),
        "pid": pid,
        "time": iso(utc_now()),
    }
    return json.dumps(doc).encode()


def test_a_live_backup_lock_blocks_prune(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with (
        store_lock(store, "backup", "backup a", exclusive=False),
        pytest.raises(StoreLocked, match="backup a"),
        store_lock(store, "prune", "prune", exclusive=True),
    ):
        pass
    assert list(store.list("locks/")) == []


def test_a_lock_of_a_dead_process_on_this_host_is_stale(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    store.put("locks/backup-dead.json", lock_doc(int(finished.stdout)))
    with store_lock(store, "prune", "prune", exclusive=True):
        pass
