"""When an application or a hook will not quiesce (issue 5, on-prem side).

Each case makes ``ops.checkpoint`` fail with a ``QuiesceError`` whose message is one line that
names what refused (the hook, ``sqlite:PATH``, ``postgres``), and leaves things as they were:

- the filesystem is not left frozen (a write + fsync on the mount finishes promptly);
- the post-thaw hook ran whenever the pre-freeze hook had succeeded (it undoes what that did);
- no checkpoint was marked in the journal (``Journal(store, name).checkpoints()`` unchanged);
  the catch-up cycle before the quiesce may commit, without a mark.

Cases: a pre-freeze hook that hangs (killed at the hook timeout), a pre-freeze hook that exits
3, a SQLite database whose writer holds ``BEGIN IMMEDIATE`` for longer than the busy timeout,
a PostgreSQL server that is down. And through the command line: an ``--app`` with a relative
path is refused at ``machine add``, a failing ``checkpoint`` exits non-zero with one line.

All machines share one small ext4 image (loop-mounted for the module); each test registers a
machine of its own on it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from r2b import ops
from r2b.apps import hooks
from r2b.apps import sqlite as app_sqlite
from r2b.errors import QuiesceError
from r2b.ids import MachineName
from r2b.journal.snapshot import Journal
from tests.appdisks import FreezeWatch, thaw_quietly, write_completes
from tests.disks import can_loop_mount, loop_mount, make_ext4_image

pytestmark = [pytest.mark.slow, pytest.mark.root]

R2B = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "r2b"


@dataclass
class Rig:
    settings: ops.Settings
    image: Path
    mnt: Path
    db: Path
    folder: Path

    def hooks(self, name: str, pre: str | None = None) -> tuple[dict[str, str], Path]:
        """Hooks that log ``pre``/``post`` to a file outside the disk (``pre`` may replace the
        pre-freeze command)."""
        log = self.folder / f"{name}-hooks.log"
        log.unlink(missing_ok=True)
        return {
            "pre_freeze": pre or f"echo pre >> {log}",
            "post_thaw": f"echo post >> {log}",
        }, log

    def checkpoints(self, name: str) -> list[str]:
        journal = Journal(self.settings.open(), MachineName(name))
        return [c.checkpoint.id for c in journal.checkpoints() if c.checkpoint]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if not can_loop_mount():
        pytest.skip("loop mounts need root and a free loop device")
    folder = tmp_path_factory.mktemp("apps-failures")
    image = make_ext4_image(folder / "disk.img", 32)
    with loop_mount(image, folder / "mnt") as mnt:
        db = mnt / "app" / "orders.db"
        db.parent.mkdir()
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        conn.execute("INSERT INTO orders (item) VALUES ('first')")
        conn.close()
        settings = ops.Settings(f"file://{folder / 'store'}", folder / "home")
        try:
            yield Rig(settings, image, mnt, db, folder)
        finally:
            thaw_quietly(mnt)


def _fails_cleanly(rig: Rig, name: str, naming: str, within_s: float) -> QuiesceError:
    """Checkpoint ``name``: it must fail with a one-line QuiesceError naming ``naming``, in
    less than ``within_s``, without a mark, leaving the mount writable and not frozen."""
    before = rig.checkpoints(name)
    started = time.monotonic()
    with pytest.raises(QuiesceError) as caught:
        ops.checkpoint(rig.settings, name, "full")
    took = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert naming in message, message
    assert took < within_s, f"the failure took {took:.1f} s"
    assert write_completes(rig.mnt, 3.0), f"{rig.mnt} was left frozen"
    assert rig.checkpoints(name) == before
    return caught.value


def test_a_hanging_pre_freeze_hook_is_killed_at_its_timeout(rig: Rig) -> None:
    """A pre-freeze hook that hangs is killed at the machine's hook timeout."""
    commands, log = rig.hooks("hang", pre="sleep 30.4217; true")
    ops.add_machine(rig.settings, "hang", [str(rig.image)], hooks={**commands, "timeout_s": "1"})
    error = _fails_cleanly(rig, "hang", "pre-freeze hook", within_s=10)
    assert "did not finish within 1 s" in str(error)
    assert not log.exists(), "the post-thaw hook ran although the pre-freeze hook failed"
    # the hook's process group was killed: no `sleep 30` is left behind
    left = subprocess.run(["pgrep", "-af", "sleep 30.4217"], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"the hung hook is still running: {left.stdout}"


def test_the_hook_timeout_constant_takes_effect(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default hook timeout (``r2b.apps.hooks.DEFAULT_HOOK_TIMEOUT_S``) is read at call
    time, for machines registered without their own."""
    monkeypatch.setattr(hooks, "DEFAULT_HOOK_TIMEOUT_S", 0.5)
    commands, _ = rig.hooks("slowhook", pre="sleep 3")
    ops.add_machine(rig.settings, "slowhook", [str(rig.image)], hooks=commands)
    started = time.monotonic()
    with pytest.raises(QuiesceError, match=r"did not finish within 0\.5 s"):
        ops.checkpoint(rig.settings, "slowhook", "full")
    assert time.monotonic() - started < 2.5


def test_a_failing_pre_freeze_hook(rig: Rig) -> None:
    commands, log = rig.hooks("prefail", pre="echo 'cannot flush the cache' >&2; exit 3")
    ops.add_machine(rig.settings, "prefail", [str(rig.image)], hooks=commands)
    error = _fails_cleanly(rig, "prefail", "pre-freeze hook", within_s=10)
    assert "status 3" in str(error)
    assert "cannot flush the cache" in str(error)  # the hook's own last words
    assert error.target == "pre-freeze hook"
    assert not log.exists(), "the post-thaw hook ran although the pre-freeze hook failed"


def test_a_sqlite_writer_that_will_not_let_go(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_sqlite, "BUSY_TIMEOUT_S", 1.0)
    commands, log = rig.hooks("sqlbusy")
    ops.add_machine(rig.settings, "sqlbusy", [str(rig.image)], [f"sqlite:{rig.db}"], hooks=commands)
    holder = sqlite3.connect(rig.db, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO orders (item) VALUES ('held')")
    try:
        error = _fails_cleanly(rig, "sqlbusy", f"sqlite:{rig.db}", within_s=10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in str(error)
    assert log.read_text().split() == ["pre", "post"]
    # the database is left as it was, and writable
    conn = sqlite3.connect(rig.db, isolation_level=None, timeout=1)
    conn.execute("INSERT INTO orders (item) VALUES ('after')")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_postgres_server_that_is_down(rig: Rig) -> None:
    nowhere = rig.folder / "no-server-here"
    nowhere.mkdir(exist_ok=True)
    spec = f"postgres:host={nowhere} port=5999 dbname=postgres user=postgres"
    commands, log = rig.hooks("pgdown")
    ops.add_machine(rig.settings, "pgdown", [str(rig.image)], [spec], hooks=commands)
    error = _fails_cleanly(rig, "pgdown", "postgres", within_s=15)
    assert "cannot connect" in str(error)
    assert log.read_text().split() == ["pre", "post"]


def test_a_failing_post_thaw_hook_does_not_hide_the_cause(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PRODUCT BUG: when the quiesce fails and the post-thaw hook then fails too, the hook's
    error (raised in ``r2b.apps.agent._hooks``'s ``finally``) replaces the real cause: the
    operator reads "post-thaw hook ... exited with status 1" and never learns that the
    SQLite writer would not let go."""
    monkeypatch.setattr(app_sqlite, "BUSY_TIMEOUT_S", 0.5)
    commands = {"pre_freeze": "true", "post_thaw": "exit 1"}
    ops.add_machine(
        rig.settings, "postfail", [str(rig.image)], [f"sqlite:{rig.db}"], hooks=commands
    )
    holder = sqlite3.connect(rig.db, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        error = _fails_cleanly(rig, "postfail", "could not quiesce", within_s=10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert f"sqlite:{rig.db}" in str(error), f"the cause is hidden: {error}"


def test_a_freeze_that_took_hold_is_undone_when_the_capture_fails(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure *while frozen* (here: reading the disk) thaws too, and runs the post-thaw."""
    import r2b.journal.replicator as replicator

    watch = FreezeWatch().patch(monkeypatch)
    commands, log = rig.hooks("capturefail")
    ops.add_machine(rig.settings, "capturefail", [str(rig.image)], hooks=commands)
    ops.replicate(rig.settings, "capturefail")  # so the catch-up cycle of the checkpoint is quick
    real_capture = replicator.Replicator._capture_all

    def failing(self: replicator.Replicator, *args: object, **kwargs: object) -> object:
        if watch.windows and watch.last.thaw_started is None:
            raise OSError(5, "Input/output error (simulated)")
        return real_capture(self, *args, **kwargs)

    monkeypatch.setattr(replicator.Replicator, "_capture_all", failing)
    before = rig.checkpoints("capturefail")
    with pytest.raises(OSError, match="simulated"):
        ops.checkpoint(rig.settings, "capturefail", "full")
    assert watch.last.thawed_at is not None, "the freeze was not undone"
    assert write_completes(rig.mnt, 3.0), f"{rig.mnt} was left frozen"
    assert log.read_text().split() == ["pre", "post"]
    assert rig.checkpoints("capturefail") == before


# --- the command line --------------------------------------------------------------------


def _cli_env(rig: Rig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2B_", "PREFECT_"))}
    env.update(
        R2B_HOME=str(rig.folder / "cli-home"),
        R2B_STORE=rig.settings.store_url,
        PREFECT_HOME=str(rig.folder / "prefect-home"),  # no developer profile: run in-process
        PATH=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]),
    )
    return env


def _r2b(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(R2B), *args], env=_cli_env(rig), capture_output=True, text=True, timeout=120
    )


def test_cli_refuses_an_app_with_a_relative_path(rig: Rig) -> None:
    proc = _r2b(rig, "machine", "add", "relapp", "--disk", str(rig.image), "--app", "sqlite:db/x")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "sqlite:db/x" in lines[0] and "absolute" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert [m.name for m in ops.machines(rig.settings) if m.name == "relapp"] == []


def test_cli_checkpoint_that_cannot_quiesce(rig: Rig) -> None:
    commands = {"pre_freeze": "echo 'service will not pause' >&2; exit 3"}
    ops.add_machine(rig.settings, "clifail", [str(rig.image)], hooks=commands)
    proc = _r2b(rig, "checkpoint", "clifail", "--full")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("r2b: error: could not quiesce pre-freeze hook"), lines[0]
    assert "service will not pause" in lines[0]
    assert proc.stdout.strip() == ""
    assert write_completes(rig.mnt, 3.0)
    assert rig.checkpoints("clifail") == []


def test_an_application_whose_files_are_off_the_protected_disks_is_refused(
    rig: Rig, tmp_path: Path
) -> None:
    """Metadata about a database the backup will not hold would promise a restore it cannot
    give: the checkpoint is refused, naming the files."""
    elsewhere = tmp_path / "elsewhere.db"
    with sqlite3.connect(elsewhere) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    ops.add_machine(rig.settings, "offdisk", [str(rig.image)], [f"sqlite:{elsewhere}"])
    error = _fails_cleanly(rig, "offdisk", "not on a mounted filesystem", within_s=10)
    assert str(elsewhere) in str(error)
