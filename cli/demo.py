"""``r2b demo``: the whole story on the embedded store, explained as it goes.

It builds a sample machine (an ext4 disk made by ``mke2fs -d`` holding documents, a SQLite
database and a Maildir), replicates it, requests a full backup, builds it from the replica,
changes files, takes an incremental, restores, fails over, verifies, and prints what a separate
backup would have sent over the WAN.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from cli.output import Output
from r2b import ops
from r2b.errors import BadInput
from r2b.journal.failover import sha256_of

DISK_MIB = 64


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not found:
        raise BadInput(f"the demo needs {name} (Debian package e2fsprogs): run 'make demo'")
    return found


def sample_tree(root: Path, seed: int = 7) -> Path:
    """Documents, a SQLite database and a Maildir, as a small office machine would have."""
    rng = random.Random(seed)
    vocabulary = "replica backup checkpoint journal chunk restore failover cloud disk block"
    words = vocabulary.split()
    docs = root / "home/alice/docs"
    docs.mkdir(parents=True)
    for i in range(40):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(200, 4000)))
        (docs / f"report-{i:02d}.txt").write_text(text + "\n")
    (root / "home/alice/photo.bin").write_bytes(rng.randbytes(3 << 20))
    db = root / "var/lib/app/orders.db"
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)")
        conn.executemany(
            "INSERT INTO orders (item, qty) VALUES (?, ?)",
            [(rng.choice(words), rng.randint(1, 9)) for _ in range(5000)],
        )
    maildir = root / "home/alice/Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i in range(50):
        msg = EmailMessage()
        msg["From"] = "bob@example.com"
        msg["To"] = "alice@example.com"
        msg["Subject"] = f"Quarterly numbers #{i}"
        msg["Message-ID"] = f"<demo-{i}@example.com>"
        msg.set_content(" ".join(rng.choice(words) for _ in range(300)))
        (maildir / "cur" / f"{1700000000 + i}.demo{i}:2,S").write_bytes(bytes(msg))
    return root


def make_disk(path: Path, tree: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(DISK_MIB << 20)
    subprocess.run(
        [_tool("mke2fs"), "-q", "-F", "-t", "ext4", "-d", str(tree), str(path)],
        check=True,
        capture_output=True,
    )


def change_files(disk: Path, work: Path) -> None:
    """Write a new document and replace one, inside the image (debugfs, no mount needed)."""
    new = work / "new.txt"
    new.write_text("minutes of the DR review\n" * 2000)
    script = work / "debugfs.cmds"
    script.write_text(
        f"write {new} /home/alice/docs/minutes.txt\n"
        "rm /home/alice/docs/report-03.txt\n"
        f"write {new} /home/alice/docs/report-03.txt\n"
    )
    subprocess.run(
        [_tool("debugfs"), "-w", "-f", str(script), str(disk)], check=True, capture_output=True
    )


class Demo:
    def __init__(self, out: Output, root: Path) -> None:
        self.out = out
        self.root = root
        self.settings = ops.Settings(f"file://{root / 'store'}", root / "home")
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
        s, root = self.settings, self.root
        disk = root / "web1-disk0.img"
        tree = root / "tree"
        self.step(
            "Build a sample machine: a 64 MiB ext4 disk with documents, a SQLite "
            "database and a Maildir (mke2fs -d)",
            lambda: make_disk(disk, sample_tree(tree)),
        )
        self.step(
            "Register machine web1 and its disk", lambda: ops.add_machine(s, "web1", [str(disk)])
        )
        first = self.step(
            "Replicate: only non-zero blocks travel, compressed", lambda: ops.replicate(s, "web1")
        )
        self.note(
            f"cycle {first.seq}: {first.blocks_changed} blocks, {first.bytes_uploaded:,} bytes sent"
        )
        full_mark = self.step(
            "Request a full backup: capture, mark checkpoint",
            lambda: ops.checkpoint(s, "web1", "full"),
        )
        sha_full = sha256_of(disk)
        full = self.step(
            "Backup proxy: build the full image from the replica (no WAN)",
            lambda: ops.backup(s, "web1")[0].manifest,
        )
        full_read = sum(d.bytes_read for d in full.disks.values())
        self.note(f"{full.id}: read {full_read:,} bytes from the replica")
        self.step(
            "Change files on the machine (a new document, one replaced)",
            lambda: change_files(disk, root),
        )
        inc_mark = self.step(
            "Request an incremental backup", lambda: ops.checkpoint(s, "web1", "incremental")
        )
        self.note(f"checkpoint {inc_mark.checkpoint}: {inc_mark.bytes_uploaded:,} bytes sent")
        sha_inc = sha256_of(disk)
        inc = self.step(
            "Build the incremental: reads only the changed-block list",
            lambda: ops.backup(s, "web1")[0].manifest,
        )
        inc_read = sum(d.bytes_read for d in inc.disks.values())
        self.note(f"{inc.id}: read {inc_read:,} bytes of a {DISK_MIB} MiB disk")
        restored = self.step(
            "Restore the full image as a whole disk",
            lambda: ops.restore_disk(s, full.id, root / "restored-full.img"),
        )
        self.note(
            f"sha256 matches the disk at {full_mark.checkpoint}: {restored.sha256 == sha_full}"
        )
        failed_over = self.step(
            "Fail over to the latest checkpoint",
            lambda: ops.failover(s, "web1", root / "failover", inc_mark.checkpoint)[0],
        )
        self.note(
            f"sha256 matches the disk at {inc_mark.checkpoint}: {failed_over.sha256 == sha_inc}"
        )
        report = self.step("Verify every stored chunk", lambda: ops.verify(s))
        damaged = len(report.corrupt) + len(report.missing)
        self.note(f"{report.checked} chunks checked, {damaged} damaged")
        return self._summary(
            first,
            full_mark,
            inc_mark,
            full,
            inc,
            restored.sha256 == sha_full,
            failed_over.sha256 == sha_inc,
            report.ok,
        )

    def _summary(
        self,
        first: Any,
        full_mark: Any,
        inc_mark: Any,
        full: Any,
        inc: Any,
        restore_ok: bool,
        failover_ok: bool,
        verify_ok: bool,
    ) -> dict[str, Any]:
        replicated = first.bytes_uploaded + full_mark.bytes_uploaded + inc_mark.bytes_uploaded
        separate = sum(d.bytes_stored for m in (full, inc) for d in m.disks.values())
        return {
            "ok": restore_ok and failover_ok and verify_ok,
            "store": self.settings.store_url,
            "wan_bytes_replication": replicated,
            "wan_bytes_for_backups": 0,
            "wan_bytes_a_separate_backup_would_send": separate,
            "backups": [full.id, inc.id],
            "restore_exact": restore_ok,
            "failover_exact": failover_ok,
            "verify_clean": verify_ok,
            "seconds": round(time.perf_counter() - self.started, 1),
        }


def run_demo(out: Output, keep: Path | None) -> dict[str, Any]:
    root = keep or Path(tempfile.mkdtemp(prefix="r2b-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise BadInput(f"{root} is not empty: the demo needs a fresh folder")
    summary = Demo(out, root).run()
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return summary
