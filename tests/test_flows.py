"""The flows as real Prefect flow runs on the session's server, and the same flows in-process.

A machine with one 16 MiB raw disk (random data at a few offsets, zeros elsewhere) goes through
register -> replicate -> full checkpoint -> failover at that checkpoint. Orchestrated, the
server must have recorded each flow run and its task runs as COMPLETED and received the
``r2b.checkpoint.synced`` event; in-process (no PREFECT_API_URL), ``run_flow`` must give the same
results without a single network connection.
"""

from __future__ import annotations

import errno
import random
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prefect import tags
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventRelatedFilter,
)
from prefect.events.schemas.events import ReceivedEvent
from prefect.settings import temporary_settings

from flows import runtime
from flows.failover import failover_flow
from flows.machines import register_machine_flow
from flows.replicate import checkpoint_flow, replicate_flow
from tasks.summaries import CycleSummary, DiskImage, MachineSummary
from tests.disks import MIB, sha256_file
from tests.prefect_server import PrefectServer

pytestmark = pytest.mark.slow

T = TypeVar("T")

DISK_SIZE = 16 * MIB
SYNCED = "r2b.checkpoint.synced"
# flow name -> the task names its one run must have recorded
FLOW_TASKS = {
    "register-machine": ["register-machine"],
    "replicate": ["replicate-cycle"],
    "request-backup": ["mark-checkpoint"],
    "failover": ["failover-disks"],
}
SERVER_WAIT_S = 30.0  # task runs and events reach the database through the server's services


def make_disk(path: Path, seed: int = 7) -> Path:
    """A sparse 16 MiB raw disk with random data written at a few random offsets."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(DISK_SIZE)
        for _ in range(24):
            f.seek(rng.randrange(DISK_SIZE - 8192))
            f.write(rng.randbytes(rng.randint(1, 8192)))
    return path


@dataclass
class Outcome:
    machine: MachineSummary
    cycles: list[CycleSummary]
    checkpoint: CycleSummary
    images: list[DiskImage]

    def comparable(self) -> dict[str, Any]:
        """Everything but the absolute paths, which differ between two runs."""
        return {
            "machine": {**self.machine.model_dump(), "disks": _names(self.machine.disks)},
            "cycles": [c.model_dump() for c in self.cycles],
            "checkpoint": self.checkpoint.model_dump(),
            "images": [{**i.model_dump(), "path": Path(i.path).name} for i in self.images],
        }


def _names(paths: list[str]) -> list[str]:
    return [Path(p).name for p in paths]


def scenario(root: Path, machine: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Outcome]:
    """Register, replicate, checkpoint (full) and fail over at the checkpoint, under ``root``.

    Each step goes through ``flows.runtime.run_flow``, as the CLI does.
    """
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("R2B_HOME", str(root / "home"))
    monkeypatch.delenv("R2B_STORE", raising=False)
    disk = make_disk(root / "disk.img")
    registered = runtime.run_flow(register_machine_flow, machine, [str(disk)])
    cycles = runtime.run_flow(replicate_flow, machine)
    checkpoint = runtime.run_flow(checkpoint_flow, machine, "full")
    assert checkpoint.checkpoint is not None
    images = runtime.run_flow(failover_flow, machine, str(root / "failover"), checkpoint.checkpoint)
    return disk, Outcome(registered, cycles, checkpoint, images)


def check_outcome(disk: Path, machine: str, outcome: Outcome) -> None:
    """What any correct run of the scenario returns, whichever way it ran."""
    assert outcome.machine.name == machine
    assert outcome.machine.disks == [str(disk)]
    assert len(outcome.cycles) == 1
    first = outcome.cycles[0]
    assert first.seq == 1 and first.checkpoint is None and first.blocks_changed > 0
    assert first.bytes_uploaded > 0
    assert outcome.checkpoint.seq > first.seq
    assert outcome.checkpoint.blocks_changed == 0  # the disk did not change in between
    assert len(outcome.images) == 1
    image = outcome.images[0]
    assert image.bytes_written == DISK_SIZE
    assert image.sha256 == sha256_file(disk) == sha256_file(Path(image.path))


# --- orchestrated ------------------------------------------------------------------------------


def eventually(probe: Callable[[], T | None], what: str, timeout: float = SERVER_WAIT_S) -> T:
    """Poll ``probe`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s, still no {what}")
        time.sleep(0.25)


def flow_runs(client: SyncPrefectClient, flow_name: str, tag: str) -> list[FlowRun]:
    return client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
    )


def completed_task_runs(
    client: SyncPrefectClient, run: FlowRun, expected: int
) -> list[TaskRun] | None:
    """The run's task runs once ``expected`` of them are recorded as terminal, else None."""
    found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    final = [t for t in found if t.state_type is not None and t.state_type.value in _FINAL]
    return found if len(found) >= expected and len(final) == len(found) else None


_FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def synced_events(
    client: SyncPrefectClient, run: FlowRun, since: datetime
) -> list[ReceivedEvent] | None:
    page = client.read_events(
        EventFilter(
            # model_validate: the fields are typed as Prefect's DateTime; a datetime is valid
            occurred=EventOccurredFilter.model_validate(
                {"since": since, "until": datetime.now(UTC) + timedelta(minutes=1)}
            ),
            event=EventNameFilter(name=[SYNCED]),
            related=EventRelatedFilter(id=[f"prefect.flow-run.{run.id}"]),
        ),
        limit=50,  # the client's default (100) is more than the server accepts (50)
    )
    return page.events or None


def test_flows_run_on_the_server(
    orchestrated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runtime.orchestrated()
    machine = f"m-{uuid.uuid4().hex[:8]}"
    tag = f"test-{machine}"
    since = datetime.now(UTC) - timedelta(seconds=5)
    with tags(tag):
        disk, outcome = scenario(tmp_path / "orchestrated", machine, monkeypatch)
    check_outcome(disk, machine, outcome)

    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == orchestrated.rstrip("/")
        runs: dict[str, FlowRun] = {}
        for flow_name, task_names in FLOW_TASKS.items():
            found = flow_runs(client, flow_name, tag)
            assert len(found) == 1, f"{flow_name}: {len(found)} flow runs tagged {tag}"
            run = runs[flow_name] = found[0]
            assert run.state_type == StateType.COMPLETED, f"{flow_name}: {run.state}"
            assert run.parameters.get("machine", run.parameters.get("name")) == machine
            task_runs = eventually(
                partial(completed_task_runs, client, run, len(task_names)),
                f"completed task runs of {flow_name}",
            )
            assert sorted(t.name.rsplit("-", 1)[0] for t in task_runs) == sorted(task_names)
            assert {t.state_type for t in task_runs} == {StateType.COMPLETED}, task_runs

        (event,) = eventually(
            lambda: synced_events(client, runs["request-backup"], since), f"{SYNCED} event"
        )
    assert event.resource.id == f"r2b.machine.{machine}"
    assert event.payload == {
        "machine": machine,
        "checkpoint": outcome.checkpoint.checkpoint,
        "type": "full",
        "store": f"file://{tmp_path / 'orchestrated' / 'home' / 'store'}",
    }

    # The same flows in-process on an identical disk give the same results.
    monkeypatch.delenv("PREFECT_API_URL")
    assert not runtime.orchestrated()
    twin_disk, twin = scenario(tmp_path / "in-process", machine, monkeypatch)
    check_outcome(twin_disk, machine, twin)
    assert twin.comparable() == outcome.comparable()
    with get_client(sync_client=True) as client:
        assert len(flow_runs(client, "failover", tag)) == 1  # no new flow run


# --- in-process --------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuse (and record) every socket connection made by the test or a thread it starts.

    Threads that were already running (Prefect's event and log workers, left by earlier
    orchestrated tests in this session) keep their network.
    """
    attempts: list[object] = []
    others = {t.ident for t in threading.enumerate()} - {threading.get_ident()}
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if threading.get_ident() in others:
            return connect(self, address)
        attempts.append(address)
        raise ConnectionRefusedError(f"no network in this test: {address!r}")

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        if threading.get_ident() in others:
            return connect_ex(self, address)
        attempts.append(address)
        return errno.ECONNREFUSED

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield attempts


def test_run_flow_in_process_contacts_no_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("R2B_PREFECT", raising=False)
    assert not runtime.orchestrated()
    machine = "inproc"
    # Were Prefect to be asked anything, it would go to a closed port and fail loudly
    # (instead of quietly starting an ephemeral server).
    with temporary_settings(updates={"api.url": "http://127.0.0.1:9/api"}):
        disk, outcome = scenario(tmp_path, machine, monkeypatch)
    check_outcome(disk, machine, outcome)
    assert no_network == []


# --- overhead ----------------------------------------------------------------------------------


def test_flow_run_overhead(
    orchestrated: str,
    prefect_server: PrefectServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    """Wall time of a flow run minus the same body in-process (a no-change replicate cycle)."""
    monkeypatch.setenv("R2B_HOME", str(tmp_path / "home"))
    disk = make_disk(tmp_path / "disk.img")
    register_machine_flow.fn("overhead", [str(disk)])
    replicate_flow.fn("overhead")  # the first cycle copies the disk; later ones find nothing

    def median_s(run: Callable[[], object], times: int = 3) -> float:
        run()  # warm-up (connections, caches)
        samples = []
        for _ in range(times):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    body = median_s(lambda: replicate_flow.fn("overhead"))
    orchestrated_run = median_s(lambda: replicate_flow("overhead"))
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        without_heartbeat = median_s(lambda: replicate_flow("overhead"))
    overhead = orchestrated_run - body
    record_property("flow_body_s", round(body, 3))
    record_property("flow_run_overhead_s", round(overhead, 3))
    record_property("flow_run_overhead_no_heartbeat_s", round(without_heartbeat - body, 3))
    record_property("server_startup_s", round(prefect_server.startup_s, 1))
    print(
        f"\nPrefect server healthy after {prefect_server.startup_s:.1f} s; "
        f"flow body in-process {body:.3f} s; as a flow run +{overhead:.3f} s "
        f"(+{without_heartbeat - body:.3f} s with heartbeats off)"
    )
    assert overhead < 10.0, f"a flow run costs {overhead:.1f} s more than its body"
