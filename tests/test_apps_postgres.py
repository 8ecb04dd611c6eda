"""An application-consistent backup of a real PostgreSQL 15 under load (issue 5, on-prem side).

The server's data directory lives on an ext4 disk image, loop-mounted, that r2b protects with
``--app postgres:CONNINFO``. A thread inserts rows in small committed transactions, one at a
time, recording for each the id, when the INSERT was sent and when it returned (committed:
``synchronous_commit`` is on, so its WAL was flushed). Two application checkpoints are taken
during the load (full, then incremental), and between them a *crash-consistent* one of the same
disk through a second machine registered without applications and checkpointed without a freeze.
Each checkpoint is backed up, restored to an image file, mounted (a read-write copy), and a
server is started on the restored data directory.

What the freeze guarantees, and what the test asserts without any timing guess: the row ids
restored are a prefix ``1..k`` of the commit order, every row whose COMMIT returned before the
filesystems were frozen is there (its WAL was on the disk before the capture began), and no
row whose INSERT was sent after they were frozen is (its WAL write waited for the thaw). The
freeze times come from ``FreezeWatch``, which only observes the product's freeze; the looser
bound from the time ``ops.checkpoint`` was called holds too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from r2b import ops
from r2b.ids import MachineName
from r2b.journal.format import BackupType
from r2b.journal.replicator import CycleResult
from r2b.journal.snapshot import Journal
from tests import pg
from tests.appdisks import BackgroundLoad, FreezeWatch, Window, restored_mount
from tests.disks import can_loop_mount, e2fsck, loop_mount, make_ext4_image

pytestmark = [pytest.mark.slow, pytest.mark.root]

DISK_MIB = 192
APP = "db1"
CRASH = "db1-crash"
PAYLOAD = "r2b-" * 50  # 200 bytes a row


class InsertLoad(BackgroundLoad):
    """One connection inserting rows ``1, 2, 3, ...``, each in its own committed transaction.

    ``commits[i] = (id, sent, returned)`` with ``time.monotonic()`` taken just before the
    INSERT was sent and just after it returned; ids are committed in id order.
    """

    def __init__(self, server: pg.PgServer) -> None:
        super().__init__("insert-load")
        self.server = server

    def _run(self) -> None:
        try:
            with self.server.connect() as conn:
                next_id = 1
                while not self._stop.is_set():
                    sent = time.monotonic()
                    self.sent[next_id] = sent
                    conn.execute(
                        "INSERT INTO load (id, payload) VALUES (%s, %s)", (next_id, PAYLOAD)
                    )
                    self.commits.append((next_id, sent, time.monotonic()))
                    next_id += 1
        except BaseException as e:  # reported by the test, never swallowed
            self.error = e

    def returned_before(self, moment: float) -> set[int]:
        return {i for i, _, returned in self.commits if returned < moment}

    def sent_before(self, moment: float) -> set[int]:
        return {i for i, sent in self.sent.items() if sent < moment}


@dataclass
class Taken:
    """One checkpoint as the test saw it."""

    machine: str
    result: CycleResult
    called: float  # monotonic, just before ops.checkpoint
    returned: float  # monotonic, just after it returned
    insert_lsn_before: int  # the WAL insert position just before the call
    window: Window | None  # the freeze, for the application checkpoints


@dataclass
class Restored:
    """What a server started on a restored disk showed."""

    backup: str
    ids: list[int] = field(default_factory=list)
    orders: int | None = None
    recovery: pg.Recovered | None = None
    metadata: dict[str, Any] | None = None
    fsck_clean: bool | None = None
    failure: str | None = None  # the copy did not mount or the server did not start


@dataclass
class Scenario:
    load: InsertLoad
    full: Taken
    crash: Taken
    incremental: Taken
    restored: dict[str, Restored]  # by checkpoint role: full, crash, incremental
    settings: ops.Settings
    conninfo: str
    host_datadir: str
    seconds: dict[str, float]


def _take(
    settings: ops.Settings,
    server: pg.PgServer,
    watch: FreezeWatch,
    machine: str,
    kind: BackupType,
    freeze: bool = True,
) -> Taken:
    inserted = server.current_lsn()
    freezes = len(watch.windows)
    called = time.monotonic()
    result = ops.checkpoint(settings, machine, kind, freeze=freeze)
    returned = time.monotonic()
    window = watch.windows[-1] if len(watch.windows) > freezes else None
    return Taken(machine, result, called, returned, inserted, window)


def _inspect(settings: ops.Settings, backup: str, folder: Path, name: str) -> Restored:
    out = Restored(backup)
    try:
        with restored_mount(settings, backup, folder, name) as mnt:
            out.fsck_clean = _fsck_clean(folder / f"{name}.img")
            meta = mnt / ".r2b" / "app-metadata.json"
            out.metadata = json.loads(meta.read_text()) if meta.exists() else None
            with pg.start_on_copy(mnt / "pgdata") as copy:
                out.recovery = copy
                with copy.server.connect() as conn:
                    out.ids = [r[0] for r in conn.execute("SELECT id FROM load ORDER BY id")]
                with copy.server.connect("shop") as conn:
                    out.orders = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
                # the log as it stands once the queries ran (damage may show only on reading)
                out.recovery.problems = pg.problems_in(copy.server.log_lines())
    except Exception as e:  # the crash-consistent copy may not come up: recorded, judged later
        out.failure = f"{type(e).__name__}: {str(e)[-3000:]}"
    return out


def _fsck_clean(image: Path) -> bool:
    try:
        e2fsck(image)
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def _server_on_disk(folder: Path) -> Iterator[tuple[Path, Path, pg.PgServer]]:
    image = make_ext4_image(folder / "db1.img", DISK_MIB)
    with loop_mount(image, folder / "mnt") as mnt:
        datadir = pg.initdb(mnt / "pgdata")
        with pg.running(datadir) as server:
            yield image, mnt, server


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    reason = pg.unavailable()
    if reason is None and not can_loop_mount():
        reason = "loop mounts need root and a free loop device"
    if reason:
        pytest.skip(reason)
    folder = pg.reachable_dir("r2b-apps-pg-")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    try:
        settings = ops.Settings(f"file://{folder / 'store'}", folder / "home")
        with pytest.MonkeyPatch.context() as mp, _server_on_disk(folder) as (image, _mnt, server):
            watch = FreezeWatch().patch(mp)
            with server.connect() as conn:
                conn.execute(
                    "CREATE TABLE load (id bigint PRIMARY KEY, payload text NOT NULL, "
                    "at timestamptz NOT NULL DEFAULT clock_timestamp())"
                )
                conn.execute("CREATE DATABASE shop")
            with server.connect("shop") as conn:
                conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
                conn.execute(
                    "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 250) g"
                )
            ops.add_machine(settings, APP, [str(image)], [f"postgres:{server.conninfo}"])
            ops.add_machine(settings, CRASH, [str(image)])
            seconds["setup"] = time.perf_counter() - started

            load = InsertLoad(server).start()
            try:
                load.wait_for(300)
                full = _take(settings, server, watch, APP, "full")
                load.wait_for(3000)  # WAL a crash-consistent copy has to replay
                crash = _take(settings, server, watch, CRASH, "full", freeze=False)
                load.wait_for(300)
                incremental = _take(settings, server, watch, APP, "incremental")
                load.wait_for(100)  # it goes on after the thaw
            finally:
                load.stop()
            assert load.error is None, f"the insert load failed: {load.error!r}"
            host_datadir, conninfo = str(server.datadir), server.conninfo
        seconds["load_and_checkpoints"] = time.perf_counter() - started - seconds["setup"]

        mark = time.perf_counter()
        built = {
            (r.manifest.machine, r.manifest.checkpoint): r.manifest.id
            for machine in (APP, CRASH)
            for r in ops.backup(settings, machine)
        }
        seconds["backups"] = time.perf_counter() - mark

        mark = time.perf_counter()
        restored = {}
        for role, taken in (("full", full), ("crash", crash), ("incremental", incremental)):
            backup = built[(taken.machine, taken.result.checkpoint)]
            restored[role] = _inspect(settings, backup, folder, role)
        seconds["restores"] = time.perf_counter() - mark
        seconds["total"] = time.perf_counter() - started
        yield Scenario(
            load, full, crash, incremental, restored, settings, conninfo, host_datadir, seconds
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _assert_exact_prefix(scn: Scenario, taken: Taken, restored: Restored) -> None:
    load = scn.load
    assert restored.failure is None, restored.failure
    ids = restored.ids
    assert ids, "the restored table is empty"
    k = ids[-1]
    assert ids == list(range(1, k + 1)), (
        "the restored rows are not a prefix of the commit order: "
        f"missing {sorted(set(range(1, k + 1)) - set(ids))[:10]}"
    )
    window = taken.window
    assert window is not None, "the application checkpoint did not freeze the filesystem"
    committed = load.returned_before(window.frozen_at)
    possible = load.sent_before(window.frozen_at)
    missing = sorted(committed - set(ids))
    extra = sorted(set(ids) - possible)
    assert not missing, f"rows committed before the freeze are missing: {missing[:10]}"
    assert not extra, f"rows sent only after the freeze took hold were restored: {extra[:10]}"
    # the bound an operator can check without our instrumentation
    assert load.returned_before(taken.called) <= set(ids)
    assert set(ids) <= load.sent_before(taken.returned)
    # the only row that can be in doubt is the one in flight when the freeze took hold
    assert len(possible - committed) <= 1


def _assert_writes_waited(scn: Scenario, taken: Taken) -> None:
    """No COMMIT both started and returned inside the frozen window: writes wait for the thaw."""
    window = taken.window
    assert window is not None and window.thaw_started is not None
    inside = [
        i
        for i, sent, returned in scn.load.commits
        if sent > window.frozen_at and returned < window.thaw_started
    ]
    assert inside == [], f"commits completed while the filesystem was frozen: {inside[:10]}"
    # and the load went on after the thaw
    assert window.thawed_at is not None
    assert any(sent > window.thawed_at for _, sent, _ in scn.load.commits)


@pytest.mark.parametrize("role", ["full", "incremental"])
def test_application_checkpoint_restores_exactly_the_committed_rows(
    scenario: Scenario, role: str
) -> None:
    taken = getattr(scenario, role)
    result: CycleResult = taken.result
    assert result.consistency == "application"
    assert result.frozen_ms is not None and result.frozen_ms > 0
    assert result.frozen == [str(Path(scenario.host_datadir).parent)]
    restored = scenario.restored[role]
    _assert_exact_prefix(scenario, taken, restored)
    _assert_writes_waited(scenario, taken)
    assert restored.orders == 250
    recovery = restored.recovery
    assert recovery is not None
    # a consistent snapshot of a running server: crash recovery, and nothing damaged
    assert recovery.recovered, recovery.recovery_lines
    assert recovery.problems == [], recovery.problems
    # r2b's CHECKPOINT ran after the call, just before the freeze: replay starts there
    assert recovery.redo_start is not None
    assert recovery.redo_start >= taken.insert_lsn_before, (
        "the replay starts before the checkpoint r2b should have asked for"
    )
    # the frozen filesystem needs no journal replay of its own
    assert restored.fsck_clean is True


def test_checkpoints_are_marked_in_the_journal_and_the_backups(scenario: Scenario) -> None:
    store = scenario.settings.open()
    full, incremental = scenario.full.result, scenario.incremental.result
    marks = [c.checkpoint for c in Journal(store, MachineName(APP)).checkpoints()]
    assert [(m.id, m.type, m.consistency) for m in marks if m] == [
        (full.checkpoint, "full", "application"),
        (incremental.checkpoint, "incremental", "application"),
    ]
    for mark in marks:
        assert mark is not None and mark.frozen_ms > 0
        assert mark.app_metadata is not None
        assert mark.app_metadata["apps"] == [f"postgres:{scenario.conninfo}"]
        assert mark.app_metadata["file"]["path"] == "/.r2b/app-metadata.json"
        assert mark.app_metadata["file"]["disk"] == "disk0"
    [crash] = [c.checkpoint for c in Journal(store, MachineName(CRASH)).checkpoints()]
    assert crash is not None
    assert (crash.consistency, crash.frozen_ms, crash.frozen, crash.app_metadata) == (
        "crash",
        0.0,
        [],
        None,
    )
    result = scenario.crash.result
    assert (result.consistency, result.frozen_ms, scenario.crash.window) == ("crash", None, None)
    manifests = [(m.checkpoint, m.type, m.consistency) for m in ops.backups(scenario.settings, APP)]
    assert manifests == [
        (full.checkpoint, "full", "application"),
        (incremental.checkpoint, "incremental", "application"),
    ]
    [crash_backup] = ops.backups(scenario.settings, CRASH)
    assert (crash_backup.checkpoint, crash_backup.consistency) == (result.checkpoint, "crash")


@pytest.mark.parametrize("role", ["full", "incremental"])
def test_restored_disk_holds_the_application_metadata(scenario: Scenario, role: str) -> None:
    taken = getattr(scenario, role)
    doc = scenario.restored[role].metadata
    assert doc is not None, (
        f"no /.r2b/app-metadata.json on the restored disk {scenario.restored[role].failure or ''}"
    )
    assert doc["format"] == "r2b.app-metadata"
    assert doc["checkpoint"] == taken.result.checkpoint
    [app] = doc["apps"]
    assert app["kind"] == "postgres"
    assert app["spec"].startswith("postgres:host=")
    assert app["version"].split(".")[0] == "15"
    assert app["data_directory"] == scenario.host_datadir
    assert app["on_disk"] == [{"disk": "disk0", "partition": None, "path": "/pgdata"}]
    databases = {d["name"]: d for d in app["databases"]}
    assert {"postgres", "shop"} <= set(databases)
    tables = {(t["schema"], t["name"]): t for t in databases["postgres"]["tables"]}
    load = tables[("public", "load")]
    assert load["bytes"] >= 8192 * 2  # heap and primary key, at least a page each
    orders = {(t["schema"], t["name"]): t for t in databases["shop"]["tables"]}
    assert ("public", "orders") in orders


def _load_table(doc: dict[str, Any] | None) -> dict[str, Any]:
    assert doc is not None, "no application metadata"
    [app] = doc["apps"]
    [db] = [d for d in app["databases"] if d["name"] == "postgres"]
    [load] = [t for t in db["tables"] if t["name"] == "load"]
    return dict(load)


def test_metadata_grows_with_the_table(scenario: Scenario) -> None:
    sizes = [_load_table(scenario.restored[r].metadata)["bytes"] for r in ("full", "incremental")]
    assert sizes[1] > sizes[0], sizes


def test_crash_consistent_copy_compared(scenario: Scenario, record_property: Any) -> None:
    """What quiescing buys, measured against a copy taken without it.

    Asserted only what holds however the unfrozen read falls: when the crash-consistent copy
    comes up at all, its replay starts at the last checkpoint *before* the call (no one asked
    for one), which is the previous application checkpoint's; the application checkpoint's
    replay starts after its call. The figures are recorded (``-rP`` / junit properties).
    """
    app = scenario.restored["incremental"]
    crash = scenario.restored["crash"]
    full = scenario.restored["full"]
    assert app.recovery is not None and full.recovery is not None
    figures: dict[str, Any] = {
        "app_wal_replayed_bytes": app.recovery.wal_replayed_bytes,
        "app_startup_s": round(app.recovery.startup_s, 3),
        "app_redo_elapsed_s": app.recovery.redo_elapsed_s,
        "app_frozen_ms": scenario.incremental.result.frozen_ms,
        "seconds": {k: round(v, 2) for k, v in scenario.seconds.items()},
        "rows_committed": len(scenario.load.commits),
        "load_table_in_metadata": _load_table(app.metadata),
    }
    if crash.failure is not None:
        figures["crash_failure"] = crash.failure.splitlines()[0]
    else:
        assert crash.recovery is not None
        ids = crash.ids
        figures |= {
            "crash_wal_replayed_bytes": crash.recovery.wal_replayed_bytes,
            "crash_startup_s": round(crash.recovery.startup_s, 3),
            "crash_redo_elapsed_s": crash.recovery.redo_elapsed_s,
            "crash_rows": len(ids),
            "crash_rows_prefix": ids == list(range(1, len(ids) + 1)),
            "crash_rows_committed_before_call_missing": len(
                scenario.load.returned_before(scenario.crash.called) - set(ids)
            ),
            "crash_problems": crash.recovery.problems[:5],
            "crash_fsck_clean": crash.fsck_clean,
        }
        assert crash.recovery.redo_start is not None
        assert crash.recovery.redo_start < scenario.crash.insert_lsn_before
        assert crash.recovery.redo_start == full.recovery.redo_start
    for name, value in figures.items():
        record_property(name, value)
    print("postgres quiesce figures:", json.dumps(figures, default=str))
    assert app.recovery.redo_start is not None
    assert app.recovery.redo_start >= scenario.incremental.insert_lsn_before
