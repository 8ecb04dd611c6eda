"""The object store interface: the one place r2b keeps everything.

Contract (every implementation passes ``tests/store_conformance.py``):

- Keys are ``/``-separated relative paths of ``[A-Za-z0-9._-]`` segments; no empty segment,
  no ``.`` or ``..``. ``check_key`` enforces it.
- ``put`` stores the whole value atomically: a reader sees the old value or the new one, never
  a part. It overwrites. Idempotent.
- ``put_if_absent`` is the commit primitive: it creates the key atomically only when it does
  not exist and returns True; when it exists it changes nothing and returns False. Of two
  concurrent callers at most one gets True.
- ``get`` / ``get_range`` / ``size`` raise ``NotFound(key)`` for a key that does not exist.
  ``get_range`` returns fewer bytes only at the end of the object.
- ``list`` yields every key starting with ``prefix`` (a plain string prefix), sorted, each once.
- ``delete`` is idempotent: deleting a missing key is not an error.
- Failures are r2b errors: ``TransientStoreError`` (worth retrying), ``PermanentStoreError``.
  Implementations do not retry: ``RetryingStore`` does, in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from r2b.errors import BadInput

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def check_key(key: str) -> str:
    parts = key.split("/")
    for part in parts:
        if not _SEGMENT.fullmatch(part) or part in (".", ".."):
            raise BadInput(f"invalid object key {key!r}")
    return key


@runtime_checkable
class ObjectStore(Protocol):
    @property
    def url(self) -> str:
        """Where the store is, for messages: never contains credentials."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool: ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    def size(self, key: str) -> int: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def delete(self, key: str) -> None: ...
