"""``r2b demo``: the whole story on the embedded store, explained as it goes.

A sample machine — an ext4 disk made by ``mke2fs -d`` holding documents, a SQLite database and
a Maildir, loop-mounted as the machine's filesystem — is protected with its applications
declared. The demo replicates it, requests an application-consistent full backup, builds it
from the replica, changes files and mail through the mount, takes an incremental, lists and
searches the catalog, restores one file and one mail message, fails over, verifies, and prints
the WAN bytes a separate backup would have sent. Every step runs the same flow the CLI runs
(in-process without a Prefect server, as a flow run with one).

Without root (no loop mount), the disk is changed offline with ``debugfs`` and the
checkpoints are crash-consistent: everything but the mail item is shown.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from cli.output import Output
from r2b import ops
from r2b.errors import BadInput

DISK_MIB = 128
MAILS = 300
WORDS = [
    "replica", "backup", "checkpoint", "journal", "chunk",
    "restore", "failover", "cloud", "disk", "block",
]  # fmt: skip


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not found:
        raise BadInput(f"the demo needs {name}: run 'make demo', which installs it")
    return found


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "\n"


def _mail(i: int, rng: random.Random) -> bytes:
    msg = EmailMessage()
    msg["From"] = "bob@example.com"
    msg["To"] = "alice@example.com"
    msg["Subject"] = f"Quarterly numbers #{i}"
    msg["Message-ID"] = f"<demo-{i}@example.com>"
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    msg.set_content(_text(rng, 300))
    return bytes(msg)


def sample_tree(root: Path, seed: int = 7) -> Path:
    """Documents, a photo, a SQLite database and a Maildir, as a small office machine has."""
    rng = random.Random(seed)
    docs = root / "home/alice/docs"
    docs.mkdir(parents=True)
    for i in range(40):
        (docs / f"report-{i:02d}.txt").write_text(_text(rng, rng.randint(200, 4000)))
    (root / "home/alice/photo.bin").write_bytes(rng.randbytes(8 << 20))
    db = root / "var/lib/app/orders.db"
    db.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)")
        rows = [(rng.choice(WORDS), rng.randint(1, 9)) for _ in range(5000)]
        conn.executemany("INSERT INTO orders (item, qty) VALUES (?, ?)", rows)
        conn.commit()
    maildir = root / "home/alice/Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i in range(MAILS):
        (maildir / "cur" / f"{1700000000 + i}.demo{i}:2,S").write_bytes(_mail(i, rng))
    return root


def make_disk(path: Path, tree: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(DISK_MIB << 20)
    subprocess.run(
        [_tool("mke2fs"), "-q", "-F", "-t", "ext4", "-d", str(tree), str(path)],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def mounted(disk: Path, mountpoint: Path) -> Iterator[Path | None]:
    """The disk loop-mounted as the machine's filesystem; None when that is not possible."""
    if os.geteuid() != 0:
        yield None
        return
    mountpoint.mkdir(exist_ok=True)
    done = subprocess.run(
        [_tool("mount"), "-o", "loop", str(disk), str(mountpoint)], capture_output=True
    )
    if done.returncode != 0:
        yield None
        return
    try:
        yield mountpoint
    finally:
        subprocess.run([_tool("umount"), str(mountpoint)], capture_output=True, check=False)


def change_online(root: Path) -> None:
    """New and changed documents, new orders, a new mail: what a working day does."""
    rng = random.Random(11)
    docs = root / "home/alice/docs"
    (docs / "minutes.txt").write_text(MINUTES)
    (docs / "report-03.txt").write_text(_text(rng, 3000))
    with contextlib.closing(sqlite3.connect(root / "var/lib/app/orders.db")) as conn:
        conn.executemany(
            "INSERT INTO orders (item, qty) VALUES (?, ?)",
            [(rng.choice(WORDS), 1) for _ in range(500)],
        )
        conn.commit()
    new_mail = _mail(MAILS, rng)
    (root / "home/alice/Maildir/new" / f"{1800000000}.demo{MAILS}").write_bytes(new_mail)
    os.sync()


def change_offline(disk: Path, work: Path) -> None:
    """The same kind of change, written into the image with debugfs (no mount needed)."""
    new = work / "new.txt"
    new.write_text(MINUTES)
    script = work / "debugfs.cmds"
    script.write_text(
        f"write {new} /home/alice/docs/minutes.txt\n"
        "rm /home/alice/docs/report-03.txt\n"
        f"write {new} /home/alice/docs/report-03.txt\n"
    )
    subprocess.run(
        [_tool("debugfs"), "-w", "-f", str(script), str(disk)], check=True, capture_output=True
    )


MINUTES = "minutes of the DR review\n" * 2000


def failover_holds_the_change(image: Path) -> bool:
    """The failed-over disk passes e2fsck and holds the document written before the checkpoint
    (the live disk kept changing since, so its bytes are no reference)."""
    fsck = subprocess.run([_tool("e2fsck"), "-fn", str(image)], capture_output=True)
    cat = subprocess.run(
        [_tool("debugfs"), "-R", "cat /home/alice/docs/minutes.txt", str(image)],
        capture_output=True,
    )
    return fsck.returncode == 0 and cat.stdout.decode() == MINUTES


class Demo:
    def __init__(self, out: Output, root: Path) -> None:
        self.out = out
        self.root = root
        self.settings = ops.Settings(f"file://{root / 'store'}", root / "home")
        self.store = self.settings.store_url
        self.step_no = 0
        self.started = time.perf_counter()

    def step(self, text: str, action: Callable[[], Any]) -> Any:
        self.step_no += 1
        self.out.say(f"[bold cyan]{self.step_no:>2}.[/] {text}")
        began = time.perf_counter()
        result = action()
        self.out.say(f"    [dim]done in {time.perf_counter() - began:.1f} s[/]")
        return result

    def note(self, text: str) -> None:
        self.out.say(f"    {text}")

    def run(self) -> dict[str, Any]:
        disk = self.root / "web1-disk0.img"
        self.step(
            f"Build a sample machine: a {DISK_MIB} MiB ext4 disk with documents, a SQLite "
            f"database and a Maildir of {MAILS} messages (mke2fs -d)",
            lambda: make_disk(disk, sample_tree(self.root / "tree")),
        )
        with mounted(disk, self.root / "machine") as mnt:
            return self._story(disk, mnt)

    def _story(self, disk: Path, mnt: Path | None) -> dict[str, Any]:
        from flows.backup import backup_flow, restore_files_flow, verify_flow
        from flows.failover import failover_flow
        from flows.machines import register_machine_flow
        from flows.replicate import checkpoint_flow, replicate_flow
        from flows.runtime import run_flow

        store = self.store
        apps = [f"sqlite:{mnt}/var/lib/app/orders.db", f"maildir:{mnt}/home/alice/Maildir"]
        declared = apps if mnt else []
        how = (
            f"mounted at {mnt}, with its SQLite database and Maildir"
            if mnt
            else "not mounted (no root): crash-consistent checkpoints"
        )
        self.step(
            f"Register machine web1: its disk, {how}",
            lambda: run_flow(register_machine_flow, "web1", [str(disk)], declared, store),
        )
        first = self.step(
            "Replicate: only non-zero blocks travel, compressed",
            lambda: run_flow(replicate_flow, "web1", store)[-1],
        )
        self.note(
            f"cycle {first.seq}: {first.blocks_changed} blocks, {first.bytes_uploaded:,} bytes sent"
        )
        full_mark = self.step(
            "Request a full backup: quiesce the apps, write their metadata onto the disk, "
            "freeze, capture, thaw, mark the checkpoint",
            lambda: run_flow(checkpoint_flow, "web1", "full", store),
        )
        self._frozen(full_mark)
        full = self.step(
            "Backup proxy: build the full image from the replica (no WAN), "
            "cataloguing every file and mail message",
            lambda: run_flow(backup_flow, "web1", full_mark.checkpoint, store)[0],
        )
        self.note(
            f"{full.id}: read {full.bytes_read:,} bytes from the replica, "
            f"{full.files_indexed} files catalogued"
        )
        if mnt:
            self.step(
                "Work on the machine: documents, orders and a new mail", lambda: change_online(mnt)
            )
        else:
            self.step(
                "Change documents (offline, with debugfs)", lambda: change_offline(disk, self.root)
            )
        inc_mark = self.step(
            "Request an incremental backup",
            lambda: run_flow(checkpoint_flow, "web1", "incremental", store),
        )
        self._frozen(inc_mark)
        inc = self.step(
            "Build the incremental: reads only the changed-block list",
            lambda: run_flow(backup_flow, "web1", inc_mark.checkpoint, store)[0],
        )
        self.note(f"{inc.id}: read {inc.bytes_read:,} bytes of a {DISK_MIB} MiB disk")
        self._browse(full.id)
        restored = self.step(
            f"Restore one file from {full.id}, reading only the chunks that hold it",
            lambda: run_flow(
                restore_files_flow,
                full.id,
                ["/home/alice/docs/report-03.txt"],
                str(self.root / "restored"),
                False,
                store,
            ),
        )
        self.note(
            f"{restored.files} file, {restored.bytes_written:,} bytes written, "
            f"{restored.bytes_fetched:,} bytes fetched"
        )
        mail_ok = self._restore_mail(inc.id) if mnt else None
        image = self.step(
            f"Fail over to {inc_mark.checkpoint}",
            lambda: run_flow(
                failover_flow, "web1", str(self.root / "failover"), inc_mark.checkpoint, store
            )[0],
        )
        image_ok = failover_holds_the_change(Path(image.path))
        self.note(f"the failed-over disk is a clean ext4 holding the new minutes: {image_ok}")
        report = self.step("Verify every stored chunk", lambda: run_flow(verify_flow, [], store))
        self.note(
            f"{report.checked} chunks checked, {len(report.corrupt) + len(report.missing)} damaged"
        )
        return self._summary(
            first.bytes_uploaded + full_mark.bytes_uploaded + inc_mark.bytes_uploaded,
            [full, inc],
            {
                "failover_exact": image_ok,
                "file_restored": restored.files == 1,
                "mail_restored": mail_ok,
                "verify_clean": not (report.corrupt or report.missing),
            },
        )

    def _frozen(self, mark: Any) -> None:
        frozen = f"frozen {mark.frozen_ms:.0f} ms, " if mark.frozen_ms is not None else ""
        self.note(
            f"checkpoint {mark.checkpoint}: {frozen}{mark.consistency}-consistent, "
            f"{mark.bytes_uploaded:,} bytes sent"
        )

    def _browse(self, backup: str) -> None:
        rows = self.step(
            f"List /home/alice/docs in {backup} (from the catalog)",
            lambda: ops.ls(self.settings, backup, "/home/alice/docs"),
        )
        self.note(f"{len(rows)} entries, e.g. {', '.join(r['path'] for r in rows[:3])}")
        found = self.step(
            "Find every version of report-03.txt across all backups",
            lambda: ops.find(self.settings, "report-03.txt"),
        )
        for row in found:
            self.note(f"{row['backup']}: {row.get('size')} bytes, mtime {row.get('mtime')}")

    def _restore_mail(self, backup: str) -> bool:
        from flows.backup import restore_items_flow
        from flows.runtime import run_flow

        found = self.step(
            "Find the mail message 'Quarterly numbers #42' across all backups",
            lambda: ops.find(self.settings, "Quarterly numbers #42"),
        )
        self.note(f"in {', '.join(row['backup'] for row in found)} as {found[0]['item']}")
        result = self.step(
            f"Restore it from {backup} as an .eml file, reading only the chunks that hold it",
            lambda: run_flow(
                restore_items_flow,
                backup,
                [found[0]["item"]],
                str(self.root / "mail"),
                False,
                self.store,
            ),
        )
        self.note(f"{result.bytes_written:,} bytes written, {result.bytes_fetched:,} fetched")
        return bool(result.items)

    def _summary(
        self, replicated: int, backups: list[Any], checks: dict[str, Any]
    ) -> dict[str, Any]:
        separate = sum(b.bytes_stored for b in backups)
        return {
            "ok": all(v is not False for v in checks.values()),
            "store": self.store,
            "wan_bytes_replication": replicated,
            "wan_bytes_for_backups": 0,
            "wan_bytes_a_separate_backup_would_send": separate,
            "backups": [b.id for b in backups],
            **checks,
            "seconds": round(time.perf_counter() - self.started, 1),
        }


def run_demo(out: Output, keep: Path | None) -> dict[str, Any]:
    root = keep or Path(tempfile.mkdtemp(prefix="r2b-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise BadInput(f"{root} is not empty: the demo needs a fresh folder")
    # the flows read R2B_HOME: point it at the demo's own, never at the operator's catalog
    previous = os.environ.get("R2B_HOME")
    os.environ["R2B_HOME"] = str(root / "home")
    try:
        return Demo(out, root).run()
    finally:
        if previous is None:
            os.environ.pop("R2B_HOME", None)
        else:
            os.environ["R2B_HOME"] = previous
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
