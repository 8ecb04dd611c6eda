"""Mail messages as bytes: their headers, and an mbox split into messages (pure, no I/O).

Headers are read from a message's first bytes only (``HEAD_BYTES``; ``head_complete`` says
whether the blank line that ends them was seen): lines are unfolded, values decoded as UTF-8
(RFC 6532; anything else is replaced, never an error) and then RFC 2047 encoded-words decoded.
A malformed header gives an empty or partial field and a ``note``, never an exception.

An mbox is split the way ``mailbox.mbox`` and mail servers do: a message starts at each line
that begins with ``From `` (the From_ line, which is not part of the message); the blank line
before the next From_ line (or at the end of the file) is the separator, not part of the
message either. ``>From`` lines inside a message stay as they are stored (mboxo and mboxrd
cannot be told apart), so a restored message is byte for byte what the mbox holds.
"""

from __future__ import annotations

import email.errors
import email.header
import email.utils
from dataclasses import dataclass, field
from datetime import UTC

HEAD_BYTES = 8 << 10  # enough for the headers of nearly every message
LONG_HEAD_BYTES = 256 << 10  # a second read for the few whose headers are longer
MAX_FIELD = 2000  # characters kept of a header (a To: with hundreds of recipients)
_WANTED = {"message-id", "from", "to", "subject", "date"}


@dataclass(frozen=True)
class Headers:
    message_id: str | None
    sender: str | None
    recipients: str | None
    subject: str | None
    date_ns: int | None
    notes: list[str] = field(default_factory=list)


def header_end(head: bytes) -> int | None:
    """Where the headers of ``head`` end (the index after the blank line), or None."""
    if head.startswith((b"\n", b"\r\n")):
        return 1 if head.startswith(b"\n") else 2
    ends = [(i, len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (i := head.find(sep)) >= 0]
    if not ends:
        return None
    at, length = min(ends)
    return at + length


def head_complete(head: bytes, message_size: int) -> bool:
    """Whether ``head`` (a message's first bytes) holds all of its headers."""
    return header_end(head) is not None or len(head) >= message_size


def parse_headers(head: bytes) -> Headers:
    """The catalogued headers of a message from its first bytes."""
    end = header_end(head)
    notes = [] if end is not None else ["headers cut short"]
    block = head[:end] if end is not None else head[: head.rfind(b"\n") + 1] or head
    fields = _fields(block)
    raw_id = fields.get("message-id")
    message_id = normalize_message_id(raw_id) if raw_id else None
    if message_id is None:
        notes.append("no Message-ID")
    date = fields.get("date")
    date_ns = parse_date(date) if date else None
    if date and date_ns is None:
        notes.append("unreadable Date")
    return Headers(
        message_id,
        fields.get("from"),
        fields.get("to"),
        fields.get("subject"),
        date_ns,
        notes,
    )


def _fields(block: bytes) -> dict[str, str]:
    """The first occurrence of each wanted header, unfolded and decoded."""
    found: dict[str, list[bytes]] = {}
    current: list[bytes] | None = None
    for line in block.splitlines():
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(b":")
        current = None
        key = name.strip().lower().decode("ascii", "replace")
        if colon and key in _WANTED and key not in found:
            current = found[key] = [value]
    return {key: decode_value(b"".join(parts))[:MAX_FIELD] for key, parts in found.items()}


def decode_value(raw: bytes) -> str:
    """A header value as text: UTF-8 (else replaced), then RFC 2047 encoded-words."""
    text = " ".join(raw.decode("utf-8", "replace").split())
    if "=?" not in text:
        return text
    try:
        return " ".join(str(email.header.make_header(email.header.decode_header(text))).split())
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return text


def normalize_message_id(raw: str) -> str | None:
    """``<abc@host>`` → ``abc@host`` (the first bracketed token; else the text itself)."""
    text = raw.strip()
    start = text.find("<")
    if start >= 0:
        stop = text.find(">", start)
        if stop > start + 1:
            text = text[start + 1 : stop]
    text = text.strip()
    return text or None


def parse_date(text: str) -> int | None:
    """A Date header as UTC nanoseconds (a date without a zone is taken as UTC)."""
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return int(when.timestamp() * 1_000_000) * 1000
    except (OverflowError, OSError, ValueError):
        return None


# --- mbox ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MboxMessage:
    """One message of an mbox: its bytes are ``[offset, offset + length)`` of the file."""

    offset: int
    length: int
    head: bytes  # its first bytes (at most the scanner's ``head``)


_SEPARATOR = b"\nFrom "


class MboxScanner:
    """Splits an mbox fed in chunks, in order, with bounded memory (module docstring).

    ``feed`` each chunk, then ``close``; ``messages`` pops the messages found so far whose end
    is known. Memory: one chunk plus one head, whatever the size of the mbox.
    """

    def __init__(self, head: int = HEAD_BYTES) -> None:
        self.head = head
        self._buf = bytearray()
        self._base = 0  # file offset of _buf[0]
        self._searched = 0  # file offset where the next separator search starts
        self._size = 0
        self._starts: list[tuple[int, bytes | None]] = []  # From_ lines: offset, head
        self._ready: list[MboxMessage] = []
        self._closed = False

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        self._size += len(chunk)
        self._search(final=False)
        self._take_heads(final=False)
        self._trim()

    def close(self) -> None:
        self._search(final=True)
        self._take_heads(final=True)
        if self._starts:
            tail = bytes(self._buf[-2:])
            self._end_last(self._size - 1 if tail == b"\n\n" else self._size)
        self._closed = True

    def messages(self) -> list[MboxMessage]:
        ready, self._ready = self._ready, []
        return ready

    def _search(self, final: bool) -> None:
        buf, base = self._buf, self._base
        if self._size and self._searched == 0 and buf.startswith(b"From "):
            self._starts.append((0, None))
            self._searched = 1
        limit = len(buf) if final else len(buf) - len(_SEPARATOR) + 1
        at = max(0, self._searched - base)
        while at < limit:
            found = buf.find(_SEPARATOR, at)
            if found < 0 or found >= limit:
                break
            start = base + found + 1
            if self._starts:  # the blank line before a From_ line is a separator
                blank = found > 0 and buf[found - 1 : found] == b"\n"
                self._end_last(start - 1 if blank else start)
            self._starts.append((start, None))
            at = found + 1
        self._searched = max(self._searched, base + max(at, limit))

    def _take_heads(self, final: bool) -> None:
        end = self._base + len(self._buf)
        for index, (start, head) in enumerate(self._starts):
            if head is None and (final or end >= start + self.head):
                piece = self._buf[start - self._base : start - self._base + self.head]
                self._starts[index] = (start, bytes(piece))

    def _end_last(self, end: int) -> None:
        """The message of the newest From_ line ends at file offset ``end``."""
        start, head = self._starts.pop()
        if head is None:
            head = bytes(self._buf[start - self._base : min(end, start + self.head) - self._base])
        line = head.find(b"\n")
        skip = line + 1 if line >= 0 else len(head)
        offset = start + skip
        length = max(0, end - offset)
        self._ready.append(MboxMessage(offset, length, head[skip : skip + length]))

    def _trim(self) -> None:
        keep = self._searched - len(_SEPARATOR)
        for start, head in self._starts:
            if head is None:
                keep = min(keep, start)
        drop = max(0, keep - self._base - 1)  # one byte more: the blank-line check
        if drop:
            del self._buf[:drop]
            self._base += drop
