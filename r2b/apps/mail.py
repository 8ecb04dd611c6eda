"""Mail stores: Maildir folders and mbox files (their messages are catalogued by the proxy)."""

from __future__ import annotations

import os
from typing import Any

from r2b.errors import QuiesceError


def describe_maildir(path: str) -> dict[str, Any]:
    if not os.path.isdir(os.path.join(path, "cur")):
        raise QuiesceError(f"maildir:{path}", "not a Maildir (no cur/ folder)")
    folders = []
    for root, dirs, _ in os.walk(path):
        if {"cur", "new"} <= set(dirs):
            count = sum(len(os.listdir(os.path.join(root, sub))) for sub in ("cur", "new"))
            folders.append({"folder": os.path.relpath(root, path), "messages": count})
    return {"folders": folders, "files": [path]}


def describe_mbox(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            count = sum(1 for line in f if line.startswith(b"From "))
    except OSError as e:
        raise QuiesceError(f"mbox:{path}", e.strerror or str(e)) from None
    return {"messages": count, "bytes": os.path.getsize(path), "files": [path]}
