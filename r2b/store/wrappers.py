"""Stores that wrap a store: each takes an ``ObjectStore`` and is one itself.

- ``RetryingStore``: retries ``TransientStoreError`` with backoff, the one place r2b retries.
- ``CountingStore``: counts the bytes and calls that go through it (the "WAN bytes").
- ``FaultyStore``: raises injected faults before operations, for tests.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from r2b.errors import TransientStoreError
from r2b.store.base import ObjectStore

T = TypeVar("T")


class RetryingStore:
    """Retries every operation of ``inner`` that fails with ``TransientStoreError``.

    An operation is tried at most ``attempts`` times; before try ``n + 1`` it sleeps a random
    time between half and all of ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds. After
    the last attempt the last error is re-raised. Any other error is raised at once.

    ``list`` is resumable: when a listing fails part-way it is restarted and the keys already
    yielded are skipped (listings are sorted), so each key is still yielded once. The attempt
    count starts afresh whenever the listing made progress.

    Caveat: a ``put_if_absent`` that failed ambiguously (e.g. the connection dropped after
    the store created the key) and is retried may return False although it was our own
    earlier attempt that created the key. Callers that need certainty read the key back and
    compare its content with what they wrote.
    """

    def __init__(
        self,
        inner: ObjectStore,
        attempts: int = 4,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()

    @property
    def url(self) -> str:
        return self.inner.url

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (>= 1)."""
        cap = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        return self._rng.uniform(cap / 2, cap)

    def _call(self, fn: Callable[[], T]) -> T:
        for failures in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStoreError:
                if failures == self.attempts:
                    raise
                self._sleep(self.delay(failures))
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> None:
        self._call(lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._call(lambda: self.inner.put_if_absent(key, data))

    def get(self, key: str) -> bytes:
        return self._call(lambda: self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._call(lambda: self.inner.get_range(key, offset, length))

    def size(self, key: str) -> int:
        return self._call(lambda: self.inner.size(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        last: str | None = None
        failures = 0
        while True:
            try:
                for key in self.inner.list(prefix):
                    if last is not None and key <= last:
                        continue
                    last, failures = key, 0
                    yield key
                return
            except TransientStoreError:
                failures += 1
                if failures >= self.attempts:
                    raise
                self._sleep(self.delay(failures))

    def delete(self, key: str) -> None:
        self._call(lambda: self.inner.delete(key))


@dataclass(frozen=True)
class IOCounts:
    """What went through a ``CountingStore``: value bytes and calls, each way."""

    bytes_put: int = 0
    puts: int = 0
    bytes_got: int = 0
    gets: int = 0


class CountingStore:
    """Counts the value bytes and calls that go through it; thread-safe.

    ``put`` and ``put_if_absent`` count as puts of ``len(data)`` bytes once they return
    (whatever ``put_if_absent`` answers: the bytes were sent). ``get`` and ``get_range``
    count as gets of the bytes they return. Calls that raise are not counted. Put it below a
    ``RetryingStore`` to count every successful attempt, above to count each call once.
    """

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._counts = IOCounts()

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def bytes_put(self) -> int:
        return self._counts.bytes_put

    @property
    def puts(self) -> int:
        return self._counts.puts

    @property
    def bytes_got(self) -> int:
        return self._counts.bytes_got

    @property
    def gets(self) -> int:
        return self._counts.gets

    def snapshot(self) -> IOCounts:
        """The counts so far, consistent with each other."""
        with self._lock:
            return self._counts

    def reset(self) -> IOCounts:
        """Zero the counts; returns the counts before the reset."""
        with self._lock:
            before, self._counts = self._counts, IOCounts()
            return before

    def _add(self, bytes_put: int = 0, puts: int = 0, bytes_got: int = 0, gets: int = 0) -> None:
        with self._lock:
            c = self._counts
            self._counts = IOCounts(
                c.bytes_put + bytes_put, c.puts + puts, c.bytes_got + bytes_got, c.gets + gets
            )

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)
        self._add(bytes_put=len(data), puts=1)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        created = self.inner.put_if_absent(key, data)
        self._add(bytes_put=len(data), puts=1)
        return created

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        self._add(bytes_got=len(data), gets=1)
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = self.inner.get_range(key, offset, length)
        self._add(bytes_got=len(data), gets=1)
        return data

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


FailOn = Callable[[str, str], BaseException | None]


class FaultyStore:
    """Injects faults: calls ``fail_on(operation, key)`` first and raises what it returns.

    Operations are named after the methods: ``put``, ``put_if_absent``, ``get``,
    ``get_range``, ``size``, ``delete`` (with the key) and ``list`` (with the prefix) before
    a listing starts, then ``list_item`` (with the key) before each key is yielded, so a
    listing can fail part-way. When ``fail_on`` returns None the call goes to ``inner``.
    """

    def __init__(self, inner: ObjectStore, fail_on: FailOn) -> None:
        self.inner = inner
        self.fail_on = fail_on

    @property
    def url(self) -> str:
        return self.inner.url

    def _check(self, operation: str, key: str) -> None:
        fault = self.fail_on(operation, key)
        if fault is not None:
            raise fault

    def put(self, key: str, data: bytes) -> None:
        self._check("put", key)
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._check("put_if_absent", key)
        return self.inner.put_if_absent(key, data)

    def get(self, key: str) -> bytes:
        self._check("get", key)
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self._check("get_range", key)
        return self.inner.get_range(key, offset, length)

    def size(self, key: str) -> int:
        self._check("size", key)
        return self.inner.size(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._check("list", prefix)
        return self._items(self.inner.list(prefix))

    def _items(self, keys: Iterator[str]) -> Iterator[str]:
        for key in keys:
            self._check("list_item", key)
            yield key

    def delete(self, key: str) -> None:
        self._check("delete", key)
        self.inner.delete(key)
