"""Application items (issue 5, proxy side): catalogued from the snapshot, found, restored.

Two rigs on loop-mounted ext4 disk images, each checkpointed with its applications declared and
backed up (the item catalog is read from the replica snapshot, never from the machine):

- mail and SQLite: a Maildir++ with a few thousand messages (and some awkward ones: RFC 2047
  subjects, CRLF, headers longer than the first read, no Message-ID, a hostile Message-ID, the
  same Message-ID in two folders, a 200 KiB message), an mbox, and a SQLite database in WAL
  mode written to all along, with a reader holding an old snapshot so that the committed rows
  of the checkpoint are partly only in the WAL. The items are counted and their headers
  checked; ``find`` finds a message by Message-ID and by subject glob; messages restore as
  byte-exact ``.eml`` files; SQLite tables restore as SQL whose replay into an empty database
  gives exactly the rows of the checkpoint (and the database file alone would not: the WAL
  was honoured); the CLI does the same with ``--json``;
- PostgreSQL 15: a data directory with known rows; ``postgres:DB.SCHEMA.TABLE`` and
  ``postgres:DB`` restore as ``pg_dump`` output from a throwaway server on the restored data
  directory, which loaded into a fresh server gives exactly the rows of the checkpoint.

Pure parts (the mbox splitter, header parsing, SQL literals, safe file names) are tested on
their own first.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from catalog.items import item_glob_regex
from r2b import ops
from r2b.apps.mailparse import MboxScanner, parse_headers
from r2b.errors import BadInput, ItemNotInBackup, NoItems, RestoreConflict, ToolMissing
from r2b.journal.replicator import CheckpointRequest, Replicator
from r2b.machines import load_machine
from r2b.restore.items import safe_name, sql_literal
from tests import pg
from tests.disks import can_loop_mount, loop_mount, make_ext4_image
from tests.test_apps_sqlite_mail import SqliteWriter
from tests.test_cli_backup import cli_env, expect_error, expect_ok, finish, start

NAME = "mailhost"
DISK_MIB = 128
FOLDERS = {".": 1100, ".Sent": 600, ".Archive": 700, ".Lists.r2b": 200}  # Maildir++ folders
CUSTOMERS = 120


MBOX_MESSAGES = 40


def message_template(folder: str) -> bytes:
    """One message of ``folder``; ``@N@`` stands for its number (unique Message-IDs)."""
    return (
        f"From: sender@example.com\nTo: alice@example.com\nSubject: {folder} message @N@\n"
        f"Message-ID: <{folder.strip('.') or 'inbox'}-@N@@r2b.test>\n"
        "Date: Fri, 27 Nov 2026 04:00:00 +0000\nMIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="utf-8"\n\n'
        f"Hello Alice,\n\nthis is message @N@ of {folder}.\n"
    ).encode()


def make_mbox(path: Path) -> None:
    with path.open("wb") as f:
        for i in range(MBOX_MESSAGES):
            f.write(b"From sender@example.com Fri Nov 27 04:00:00 2026\n")
            f.write(message_template("mbox").replace(b"@N@", str(i).encode()) + b"\n")


def rig(test: Callable[..., None]) -> Callable[..., None]:
    """A test on a loop-mounted rig: slow, and root only."""
    marked: Callable[..., None] = pytest.mark.root(pytest.mark.slow(test))
    return marked


# --- pure parts ----------------------------------------------------------------------------------


def _mbox(rng: random.Random, count: int) -> tuple[bytes, list[bytes]]:
    lines = [b"hello\n", b"Fromage\n", b">From the start\n", b"\n", b"x" * 3000 + b"\n"]
    messages, data = [], b""
    for i in range(count):
        body = b"".join(rng.choice(lines) for _ in range(rng.randint(0, 12)))
        message = f"Subject: m{i}\nMessage-ID: <{i}@x>\n\n".encode() + body
        messages.append(message)
        data += b"From a@b Fri Nov 27 04:00:00 2026\n" + message + b"\n"
    return data, messages


@pytest.mark.parametrize("chunk", [1, 5, 97, 4096, 1 << 20])
def test_mbox_scanner_splits_like_mailbox_whatever_the_chunks(chunk: int) -> None:
    data, messages = _mbox(random.Random(chunk), 40)
    scanner = MboxScanner(head=256)
    found = []
    for offset in range(0, len(data), chunk):
        scanner.feed(data[offset : offset + chunk])
        found += scanner.messages()
    scanner.close()
    found += scanner.messages()
    assert [data[m.offset : m.offset + m.length] for m in found] == messages
    for m, message in zip(found, messages, strict=True):
        assert message.startswith(m.head) and len(m.head) >= min(len(message), 256 - 40)


def test_headers_are_decoded_and_never_raise() -> None:
    head = (
        b"Received: from a\r\n by b\r\nFrom: =?utf-8?q?J=C3=B6rg?= <j@x>\r\n"
        b"To: a@x,\r\n\tb@x\r\nSubject: =?utf-8?b?Q2Fmw6k=?= menu\r\n"
        b"Message-ID:\r\n  <abc@def>\r\nDate: Fri, 27 Nov 2026 04:00:00 +0100\r\n\r\nbody"
    )
    h = parse_headers(head)
    assert (h.message_id, h.sender, h.recipients, h.subject) == (
        "abc@def",
        "Jörg <j@x>",
        "a@x, b@x",
        "Café menu",
    )
    assert h.date_ns == 1_795_748_400 * 10**9 and h.notes == []
    odd = parse_headers(b"From: \xff\xfe\nDate: yesterday\nSubject: =?bogus?q?x?=\n\n")
    assert odd.message_id is None and "no Message-ID" in odd.notes
    assert "unreadable Date" in odd.notes and "headers cut short" not in odd.notes


def test_sql_literals_read_back_exactly() -> None:
    values: list[object] = [None, 0, -(2**63), 2**63 - 1, 0.1, -1e300, 1e-320, float("inf")]
    values += ["it's", "a\0b"]
    values += ["ünï", b"", b"\x00\xff", True]
    conn = sqlite3.connect(":memory:")
    for value in values:
        back = conn.execute(f"SELECT {sql_literal(value)}").fetchone()[0]
        assert back == value and type(back) is (int if type(value) is bool else type(value))


def test_safe_names_stay_in_the_folder() -> None:
    assert safe_name("../../etc/passwd@evil") == "_.._etc_passwd@evil"
    assert safe_name("...") == "item" and safe_name("a/b\0c d") == "a_b_c_d"
    assert len(safe_name("x" * 1000)) <= 180
    assert item_glob_regex("mail:*@r2b.test") == r"^mail:.*@r2b\.test$"


def _metadata(apps: list[dict[str, Any]]) -> bytes:
    doc = {"format": "r2b.app-metadata", "version": 1, "time": "2026-11-27T04:00:00+00:00"}
    return json.dumps({**doc, "checkpoint": "cp-000001", "apps": apps}).encode()


def _on(path: str) -> list[dict[str, Any]]:
    return [{"disk": "disk0", "partition": None, "path": path}]


def _mark(path: str) -> CheckpointRequest:
    place = {"disk": "disk0", "partition": None, "path": path}
    return CheckpointRequest("full", "application", {"file": place, "apps": []})


@pytest.mark.slow
def test_a_failure_to_catalog_items_never_fails_the_backup(tmp_path: Path) -> None:
    """Per application, and for all of them (the metadata file missing): the backup is built,
    its files catalogued, the reasons recorded; ``restore item`` then says why."""
    data, _ = _mbox(random.Random(3), 5)
    apps: list[dict[str, Any]] = [
        {"spec": "mbox:/m/box", "kind": "mbox", "on_disk": _on("/box")},
        {"spec": "maildir:/m/box", "kind": "maildir", "on_disk": _on("/box")},
        {"spec": "sqlite:/m/gone.db", "kind": "sqlite", "tables": [], "on_disk": _on("/gone.db")},
        {"spec": "postgres:host=/x", "kind": "postgres", "on_disk": []},
    ]
    files = {".r2b/app-metadata.json": _metadata(apps), "box": data}
    image = make_ext4_image(tmp_path / "d.img", 16, files)
    settings = ops.Settings(f"file://{tmp_path / 'store'}", tmp_path / "home")
    ops.add_machine(settings, "m", [str(image)])
    store = settings.open()
    replicator = Replicator(store, load_machine(store, "m"), settings.state_dir)
    replicator.cycle(checkpoint=_mark("/.r2b/app-metadata.json"))
    replicator.cycle(checkpoint=_mark("/.r2b/elsewhere.json"))
    first, second = (r.manifest for r in ops.backup(settings, "m"))
    items = (first.catalog or {})["items"]
    status = {a["kind"]: a for a in items["apps"]}
    assert (status["mbox"]["indexed"], status["mbox"]["items"], items["count"]) == (True, 5, 5)
    assert "not a folder" in status["maildir"]["reason"]
    assert "/gone.db: not a file" in status["sqlite"]["reason"]
    assert "not on a protected disk" in status["postgres"]["reason"]
    assert (first.catalog or {})["files"] == 4  # the backup itself is whole
    missing = (second.catalog or {})["items"]
    assert missing["count"] == 0 and missing["key"] is None
    assert "/.r2b/elsewhere.json: not a file" in missing["reason"]
    with pytest.raises(NoItems, match=r"elsewhere\.json"):
        ops.restore_items(settings, second.id, ["mail:*"], tmp_path / "out")
    assert [r["item"] for r in ops.find(settings, "mail:*")] == [f"mail:{i}@x" for i in range(5)]


# --- the mail and SQLite rig ------------------------------------------------------------------


def _special_messages() -> dict[str, bytes]:
    """Messages that test the header parser and the restore, by file name (in INBOX/cur)."""
    received = b"".join(
        b"Received: from relay%d.example.com by mx.example.com\n" % i for i in range(300)
    )
    big_body = (b"0123456789abcdef" * 64 + b"\n") * 200  # ~200 KiB
    return {
        "encoded:2,S": (
            b"From: =?utf-8?q?Ren=C3=A9e?= <renee@example.com>\nTo: alice@example.com\n"
            b"Subject: =?utf-8?q?Caf=C3=A9_menu?=\nMessage-ID: <cafe@r2b.test>\n"
            b"Date: Sat, 28 Nov 2026 09:30:00 +0100\n\nbon appetit\n"
        ),
        "crlf:2,S": (
            b"From: crlf@example.com\r\nTo: alice@example.com\r\n"
            b"Subject: Windows\r\n line endings\r\nMessage-ID: <crlf@r2b.test>\r\n"
            b"Date: Fri, 27 Nov 2026 04:00:00 +0000\r\n\r\nhi\r\n"
        ),
        "long-headers:2,S": (
            received + b"From: far@example.com\nSubject: after the Received chain\n"
            b"Message-ID: <long@r2b.test>\n\nbody\n"
        ),
        "no-id:2,S": b"From: anon@example.com\nSubject: who am I\n\nno id\n",
        "hostile:2,S": (
            b"From: x@example.com\nSubject: escape\nMessage-ID: <../../etc/passwd@evil>\n\nx\n"
        ),
        "big:2,S": (
            b"From: big@example.com\nSubject: a big one\nMessage-ID: <big@r2b.test>\n\n" + big_body
        ),
    }


def make_maildir(root: Path) -> dict[str, bytes]:
    """The Maildir++ tree; returns every message's bytes by its path below ``root``."""
    written: dict[str, bytes] = {}
    for folder, count in FOLDERS.items():
        base = root / folder
        for sub in ("cur", "new", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        template = message_template(folder)
        for i in range(count):
            sub = "cur" if i % 10 else "new"
            name = f"{folder.strip('.') or 'inbox'}-{i}:2,S"
            data = template.replace(b"@N@", str(i).encode())
            (base / sub / name).write_bytes(data)
            written[os.path.normpath(f"{folder}/{sub}/{name}")] = data
    specials = _special_messages()
    for name, data in specials.items():
        (root / "cur" / name).write_bytes(data)
        written[f"cur/{name}"] = data
    # the same message filed twice
    dup = message_template(".").replace(b"@N@", b"7")
    (root / ".Archive" / "cur" / "dup-inbox-7:2,S").write_bytes(dup)
    written[".Archive/cur/dup-inbox-7:2,S"] = dup
    return written


def make_database(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, qty INT)")
        conn.execute("CREATE INDEX orders_qty ON orders (qty)")
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)")
        conn.executemany(
            "INSERT INTO customers (name) VALUES (?)", [(f"c{i}",) for i in range(CUSTOMERS)]
        )
        conn.execute('CREATE TABLE "odd ""values""" (k INT, t TEXT, b BLOB, r REAL, n)')
        conn.execute(
            "INSERT INTO \"odd \"\"values\"\"\" VALUES (1, 'it''s', x'00ff', 0.1, NULL), "
            "(2, 'ünï', NULL, 1e300, 'a' || char(0) || 'b'), (3, CAST(x'ff41' AS TEXT), x'', "
            "-0.5, 7), (4, NULL, NULL, NULL, 2.5)"
        )
    finally:
        conn.close()


ODD_TABLE = 'odd "values"'


def table_rows(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    """Every row with each value's type, in a stable order (types matter to equality)."""
    quoted = '"' + table.replace('"', '""') + '"'
    columns = [r[1] for r in conn.execute(f"PRAGMA table_info({quoted})")]
    cells = ", ".join(f'typeof("{c}"), "{c}"' for c in columns)
    conn.text_factory = bytes  # text that is not UTF-8 too, as stored
    return sorted(conn.execute(f"SELECT {cells} FROM {quoted}").fetchall(), key=repr)


@dataclass
class MailRig:
    settings: ops.Settings
    backup: str
    paths: dict[str, str]  # db, maildir, mbox as the machine sees them
    messages: dict[str, bytes]  # Maildir messages by path below the Maildir
    metadata_rows: dict[str, int]  # SQLite tables' row counts in the metadata (from the items)
    catalog: dict[str, Any]
    folder: Path
    seconds: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def mail_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailRig]:
    if not can_loop_mount():
        pytest.skip("loop mounts need root and a free loop device")
    folder = tmp_path_factory.mktemp("items-mail")
    settings = ops.Settings(f"file://{folder / 'store'}", folder / "home")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    image = make_ext4_image(folder / "mail.img", DISK_MIB)
    with loop_mount(image, folder / "mnt") as mnt:
        db, maildir, mbox = (
            mnt / "app" / "orders.db",
            mnt / "mail" / "alice",
            mnt / "mail" / "bob.mbox",
        )
        db.parent.mkdir()
        make_database(db)
        messages = make_maildir(maildir)
        make_mbox(mbox)
        paths = {"db": str(db), "maildir": str(maildir), "mbox": str(mbox)}
        apps = [f"sqlite:{db}", f"maildir:{maildir}", f"mbox:{mbox}"]
        ops.add_machine(settings, NAME, [str(image)], apps)
        seconds["setup"] = time.perf_counter() - started
        writer = SqliteWriter(db).start()
        reader = sqlite3.connect(db, isolation_level=None)
        try:
            writer.wait_for(50)
            reader.execute("BEGIN")  # an old snapshot: the WAL cannot be checkpointed past it
            reader.execute("SELECT count(*) FROM orders").fetchone()
            writer.wait_for(300)
            mark = time.perf_counter()
            ops.checkpoint(settings, NAME, "full")
            seconds["checkpoint"] = time.perf_counter() - mark
            writer.wait_for(50)
        finally:
            reader.close()
            writer.stop()
        assert writer.error is None, writer.error
    mark = time.perf_counter()
    [built] = ops.backup(settings, NAME)
    seconds["backup"] = time.perf_counter() - mark
    catalog = built.manifest.catalog or {}
    tables = [r for r in ops.find(settings, "sqlite:*") if r["backup"] == built.manifest.id]
    counts = {r["item"].rsplit(":", 1)[1]: r["rows"] for r in tables}
    yield MailRig(settings, built.manifest.id, paths, messages, counts, catalog, folder, seconds)


@rig
def test_every_message_and_table_is_catalogued(mail_rig: MailRig) -> None:
    items = mail_rig.catalog["items"]
    print("item catalog:", {k: v for k, v in items.items() if k != "apps"}, mail_rig.seconds)
    apps = {a["kind"]: a for a in items["apps"]}
    assert all(a["indexed"] for a in apps.values()), items["apps"]
    assert apps["maildir"]["items"] == len(mail_rig.messages)
    assert apps["mbox"]["items"] == MBOX_MESSAGES
    assert apps["sqlite"]["items"] == 3
    assert items["count"] == len(mail_rig.messages) + MBOX_MESSAGES + 3
    assert items["seconds"] < 10, "cataloguing a few thousand messages should be quick"
    # read from the snapshot: the heads of the messages, not the whole disk
    assert items["bytes_read"] < 32 << 20


def _found(rig: MailRig, pattern: str) -> list[dict[str, Any]]:
    return [r for r in ops.find(rig.settings, pattern) if "item" in r]


@rig
def test_headers_are_right(mail_rig: MailRig) -> None:
    [plain] = _found(mail_rig, "mail:Sent-42@r2b.test")
    assert plain["subject"] == ".Sent message 42" and plain["from"] == "sender@example.com"
    assert plain["to"] == "alice@example.com" and plain["folder"] == "INBOX.Sent"
    assert plain["mtime"] == "2026-11-27T04:00:00Z" and plain["kind"] == "mail"
    assert plain["size"] == len(mail_rig.messages[".Sent/cur/Sent-42:2,S"])
    assert plain["stored_in"] == "/mail/alice/.Sent/cur/Sent-42:2,S"
    [cafe] = _found(mail_rig, "mail:<cafe@r2b.test>")
    assert (cafe["subject"], cafe["from"]) == ("Café menu", "Renée <renee@example.com>")
    assert cafe["mtime"] == "2026-11-28T08:30:00Z" and cafe["folder"] == "INBOX"
    [crlf] = _found(mail_rig, "mail:crlf@r2b.test")
    assert crlf["subject"] == "Windows line endings"
    [long] = _found(mail_rig, "mail:long@r2b.test")
    assert long["subject"] == "after the Received chain" and long["note"] is None
    [anon] = _found(mail_rig, "mail:/mail/alice/cur/no-id:2,S")
    assert anon["subject"] == "who am I" and "no Message-ID" in anon["note"]
    copies = _found(mail_rig, "mail:inbox-7@r2b.test")
    assert sorted(r["folder"] for r in copies) == ["INBOX", "INBOX.Archive"]
    [mbox] = _found(mail_rig, "mail:mbox-3@r2b.test")
    assert mbox["folder"] == "bob.mbox" and mbox["stored_in"] == "/mail/bob.mbox"
    assert mbox["size"] == len(message_template("mbox").replace(b"@N@", b"3"))


@rig
def test_find_by_message_id_subject_and_table(mail_rig: MailRig) -> None:
    by_id = ops.find(mail_rig.settings, "Archive-123@r2b.test")
    assert [(r["backup"], r["item"]) for r in by_id] == [
        (mail_rig.backup, "mail:Archive-123@r2b.test")
    ]
    by_subject = _found(mail_rig, "*lists.r2b MESSAGE 1?")  # subjects ignore case
    assert sorted(r["item"] for r in by_subject) == [
        f"mail:Lists.r2b-{i}@r2b.test" for i in range(10, 20)
    ]
    assert [r["item"] for r in _found(mail_rig, "café*")] == ["mail:cafe@r2b.test"]
    by_name = _found(mail_rig, "mail:Sent-1??@r2b.test")
    assert len(by_name) == 100
    assert all(set(r) >= {"backup", "item", "size", "mtime"} for r in by_name)
    [table] = _found(mail_rig, "orders")
    assert table["item"] == f"sqlite:{mail_rig.paths['db']}:orders"
    assert table["kind"] == "sqlite-table" and table["rows"] == mail_rig.metadata_rows["orders"]
    assert table["stored_in"] == "/app/orders.db"
    assert ops.find(mail_rig.settings, "mail:*", machine="nobody") == []


@rig
def test_messages_restore_byte_exact(mail_rig: MailRig, tmp_path: Path) -> None:
    wanted = ["mail:<big@r2b.test>", "mail:crlf@r2b.test", "mail:mbox-39@r2b.test"]
    wanted += ["mail:../../etc/passwd@evil", "mail:inbox-7@r2b.test"]
    out = tmp_path / "out"
    result = ops.restore_items(mail_rig.settings, mail_rig.backup, wanted, out)
    files = {i["file"].rsplit("/", 1)[1]: i for i in result.items}
    assert sorted(files) == sorted(
        ["big@r2b.test.eml", "crlf@r2b.test.eml", "mbox-39@r2b.test.eml",
         "_.._etc_passwd@evil.eml", "inbox-7@r2b.test.eml", "inbox-7@r2b.test.2.eml"]
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # nothing else, nothing above
    messages = mail_rig.messages
    assert (out / "big@r2b.test.eml").read_bytes() == messages["cur/big:2,S"]
    assert (out / "crlf@r2b.test.eml").read_bytes() == messages["cur/crlf:2,S"]
    assert (out / "_.._etc_passwd@evil.eml").read_bytes() == messages["cur/hostile:2,S"]
    mbox39 = message_template("mbox").replace(b"@N@", b"39")
    assert (out / "mbox-39@r2b.test.eml").read_bytes() == mbox39
    inbox7 = message_template(".").replace(b"@N@", b"7")
    assert (out / "inbox-7@r2b.test.eml").read_bytes() == inbox7
    assert (out / "inbox-7@r2b.test.2.eml").read_bytes() == inbox7
    assert result.bytes_written == sum(i["bytes"] for i in result.items)
    assert result.bytes_fetched < 4 << 20  # only the chunks holding those messages


def test_sqlite_tables_restore_as_sql_with_the_wal_honoured(
    mail_rig: MailRig, tmp_path: Path
) -> None:
    db = mail_rig.paths["db"]
    names = [f"sqlite:{db}:{t}" for t in ("orders", "customers", ODD_TABLE)]
    result = ops.restore_items(mail_rig.settings, mail_rig.backup, names, tmp_path / "sql")
    replay = sqlite3.connect(tmp_path / "replay.db", isolation_level=None)
    for item in result.items:
        replay.executescript(Path(item["file"]).read_text())
    committed = mail_rig.metadata_rows["orders"]
    expected = [(i, f"item {i}", i % 7) for i in range(1, committed + 1)]
    assert replay.execute("SELECT id, item, qty FROM orders ORDER BY id").fetchall() == expected
    assert {i["item"].rsplit(":", 1)[1]: i["rows"] for i in result.items} == mail_rig.metadata_rows
    customers = replay.execute("SELECT id, name FROM customers ORDER BY id").fetchall()
    assert customers == [(i + 1, f"c{i}") for i in range(CUSTOMERS)]
    assert replay.execute("SELECT seq FROM sqlite_sequence").fetchone() == (CUSTOMERS,)
    assert replay.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == [
        ("orders_qty",)
    ]
    make_database(tmp_path / "fresh.db")  # the same deterministic rows
    source = sqlite3.connect(tmp_path / "fresh.db")
    assert table_rows(replay, ODD_TABLE) == table_rows(source, ODD_TABLE)
    # the database file alone (its WAL ignored) lacks rows the checkpoint committed
    alone = tmp_path / "alone"
    ops.restore_files(mail_rig.settings, mail_rig.backup, ["/app/orders.db"], alone)
    bare = sqlite3.connect(f"file:{alone}/app/orders.db?immutable=1", uri=True)
    assert bare.execute("SELECT count(*) FROM orders").fetchone()[0] < committed


@rig
def test_item_errors(mail_rig: MailRig, tmp_path: Path) -> None:
    settings, backup = mail_rig.settings, mail_rig.backup
    with pytest.raises(BadInput, match="unknown item"):
        ops.restore_items(settings, backup, ["imap:whatever"], tmp_path / "a")
    with pytest.raises(ItemNotInBackup, match="mail:nope@x"):
        ops.restore_items(settings, backup, ["mail:nope@x"], tmp_path / "a")
    ops.restore_items(settings, backup, ["mail:cafe@r2b.test"], tmp_path / "b")
    with pytest.raises(RestoreConflict):
        ops.restore_items(settings, backup, ["mail:cafe@r2b.test"], tmp_path / "b")
    again = ops.restore_items(settings, backup, ["mail:cafe@r2b.test"], tmp_path / "b", True)
    assert [i["bytes"] for i in again.items] == [len(_special_messages()["encoded:2,S"])]


@rig
def test_find_and_restore_items_through_the_cli(mail_rig: MailRig, tmp_path: Path) -> None:
    env = cli_env(mail_rig.settings.home)
    store = ["--store", mail_rig.settings.store_url]
    out = tmp_path / "cli"
    commands = {
        "by-id": (*store, "find", "mail:<cafe@r2b.test>"),
        "by-subject": (*store, "find", "*MENU", "--machine", NAME),
        "restore": (*store, "restore", "item", f"{NAME}@latest", "mail:cafe@r2b.test",
                    f"sqlite:{mail_rig.paths['db']}:customers", "--to", str(out)),
        "missing": (*store, "restore", "item", mail_rig.backup, "mail:nope@x", "--to", str(out)),
        "bad": (*store, "restore", "item", mail_rig.backup, "nothing", "--to", str(out)),
    }  # fmt: skip
    procs = {name: start(env, *args) for name, args in commands.items()}  # side by side
    done = {name: finish(proc) for name, proc in procs.items()}
    [found] = expect_ok(commands["by-id"], done["by-id"])
    assert {"backup", "item", "size", "mtime"} <= set(found)
    assert (found["backup"], found["item"]) == (mail_rig.backup, "mail:cafe@r2b.test")
    assert found["mtime"] == "2026-11-28T08:30:00Z"
    [menu] = expect_ok(commands["by-subject"], done["by-subject"])
    assert (menu["item"], menu["subject"]) == ("mail:cafe@r2b.test", "Café menu")
    restored = expect_ok(commands["restore"], done["restore"])
    assert [i["item"] for i in restored["items"]] == [
        "mail:cafe@r2b.test",
        f"sqlite:{mail_rig.paths['db']}:customers",
    ]
    assert restored["bytes_written"] == sum(p.stat().st_size for p in out.iterdir())
    assert (out / "cafe@r2b.test.eml").read_bytes() == _special_messages()["encoded:2,S"]
    expect_error(commands["missing"], done["missing"], "mail:nope@x", mail_rig.backup)
    expect_error(commands["bad"], done["bad"], "unknown item")


# --- the PostgreSQL rig ---------------------------------------------------------------------


ACCOUNTS = [
    (i, f"name {i}" if i % 5 else f'O\'Brien "{i}" ünï', None if i % 7 == 0 else i * 1.25)
    for i in range(1, 401)
]


@dataclass
class PgRig:
    settings: ops.Settings
    backup: str
    folder: Path


@pytest.fixture(scope="module")
def pg_rig() -> Iterator[PgRig]:
    reason = pg.unavailable()
    if reason is None and not can_loop_mount():
        reason = "loop mounts need root and a free loop device"
    if reason:
        pytest.skip(reason)
    folder = pg.reachable_dir("r2b-items-pg-")
    try:
        settings = ops.Settings(f"file://{folder / 'store'}", folder / "home")
        image = make_ext4_image(folder / "pg.img", DISK_MIB)
        with (
            loop_mount(image, folder / "mnt") as mnt,
            pg.running(pg.initdb(mnt / "pgdata")) as server,
        ):
            with server.connect() as conn:
                conn.execute(
                    "CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric)"
                )
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO accounts VALUES (%s, %s, %s)", ACCOUNTS)
                conn.execute('CREATE TABLE "Mixed.Case*" (x int)')
                conn.execute('INSERT INTO "Mixed.Case*" VALUES (1), (2)')
                conn.execute("CREATE DATABASE shop")
            with server.connect("shop") as conn:
                conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
                conn.execute(
                    "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 50) g"
                )
            ops.add_machine(settings, "pg1", [str(image)], [f"postgres:{server.conninfo}"])
            ops.checkpoint(settings, "pg1", "full")
            with server.connect() as conn:  # after the checkpoint: not in the backup
                conn.execute("INSERT INTO accounts VALUES (9999, 'late', 0)")
                conn.execute("DELETE FROM accounts WHERE id = 1")
        [built] = ops.backup(settings, "pg1")
        yield PgRig(settings, built.manifest.id, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@rig
def test_postgres_items_are_catalogued(pg_rig: PgRig) -> None:
    rows = {r["item"]: r for r in ops.find(pg_rig.settings, "postgres:*")}
    assert {"postgres:postgres", "postgres:shop", "postgres:shop.public.orders"} <= set(rows)
    accounts = rows["postgres:postgres.public.accounts"]
    assert accounts["kind"] == "postgres-table" and accounts["stored_in"] == "/pgdata"
    assert accounts["size"] >= 16384 and accounts["rows"] == len(ACCOUNTS)
    assert rows["postgres:postgres.public.Mixed.Case*"]["rows"] == 2


@rig
def test_postgres_table_restores_as_pg_dump_output(pg_rig: PgRig) -> None:
    out = pg_rig.folder / "dumps"
    wanted = [
        "postgres:postgres.public.accounts",
        "postgres:shop",
        "postgres:postgres.public.Mixed.Case*",
    ]
    started = time.perf_counter()
    result = ops.restore_items(pg_rig.settings, pg_rig.backup, wanted, out)
    took = time.perf_counter() - started
    names = [Path(i["file"]).name for i in result.items]
    assert names == ["postgres.public.accounts.sql", "shop.sql", "postgres.public.Mixed.Case_.sql"]
    accounts = (out / "postgres.public.accounts.sql").read_text()
    assert "CREATE TABLE public.accounts" in accounts and "Mixed" not in accounts
    assert "CREATE TABLE public.orders" in (out / "shop.sql").read_text()
    mixed = (out / "postgres.public.Mixed.Case_.sql").read_text()
    assert 'CREATE TABLE public."Mixed.Case*"' in mixed and "accounts" not in mixed
    assert result.bytes_written == sum(p.stat().st_size for p in out.iterdir())
    fresh = pg.reachable_dir("r2b-items-fresh-")
    try:
        shutil.copy(out / "postgres.public.accounts.sql", fresh / "accounts.sql")
        (fresh / "accounts.sql").chmod(0o644)
        with pg.running(pg.initdb(fresh / "data")) as server:
            pg.as_postgres([pg.PG_BIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h",
                            server.sockdir, "-p", str(server.port), "-d", "postgres", "-f",
                            fresh / "accounts.sql"])  # fmt: skip
            with server.connect() as conn:
                rows = conn.execute("SELECT id, name, balance FROM accounts ORDER BY id").fetchall()
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    assert [(i, n, None if b is None else float(b)) for i, n, b in rows] == ACCOUNTS
    print(f"postgres items restored in {took:.2f} s")


@rig
def test_missing_pg_dump_is_one_clear_error(pg_rig: PgRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2B_PG_BIN", str(pg_rig.folder / "nowhere"))
    with pytest.raises(ToolMissing, match="pg_dump is not installed") as caught:
        ops.restore_items(pg_rig.settings, pg_rig.backup, ["postgres:shop"], pg_rig.folder / "x")
    assert "\n" not in str(caught.value) and caught.value.tool == "pg_dump"
    assert not (pg_rig.folder / "x").exists() or not any((pg_rig.folder / "x").iterdir())
