"""Pre-freeze and post-thaw hooks: operator commands with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess

from r2b.errors import QuiesceError

DEFAULT_HOOK_TIMEOUT_S = 60.0


def run_hook(name: str, command: str, timeout_s: float | None = None) -> None:
    """Run ``command`` with ``sh -c``; a non-zero exit or a timeout is a ``QuiesceError``."""
    if timeout_s is None:
        timeout_s = DEFAULT_HOOK_TIMEOUT_S
    process = subprocess.Popen(
        ["sh", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so a timeout kills the hook's children too
    )
    try:
        _, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise QuiesceError(
            f"{name} hook", f"{command!r} did not finish within {timeout_s:g} s"
        ) from None
    if process.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise QuiesceError(
            f"{name} hook", f"{command!r} exited with status {process.returncode} {tail[0]}".strip()
        )
