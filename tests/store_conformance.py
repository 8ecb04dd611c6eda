"""The ``ObjectStore`` contract as tests (see ``r2b/store/base.py``).

Subclass ``StoreContract`` in a ``test_*.py`` module and give it a ``store`` fixture that
yields an empty store; override ``leave_debris`` to drop backend-specific litter (temporary
files, foreign objects) that ``list`` must not show.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest

from r2b.errors import BadInput, NotFound
from r2b.store import ObjectStore

INVALID_KEYS = [
    "",
    "/a",
    "a/",
    "a//b",
    ".",
    "..",
    "a/../b",
    "a/./b",
    "a b",
    "a\\b",
    "ä",
    "a\n",
]
FIVE_MIB = 5 * 1024 * 1024


class StoreContract:
    """Every ``ObjectStore`` passes these; the subclass provides the ``store`` fixture."""

    def leave_debris(self, store: ObjectStore, under: str) -> None:
        """Leave litter below ``under`` (a directory-like prefix ending in '/') that is not a
        key and must not be listed. Default: nothing to leave."""

    # --- put / get ---

    @pytest.mark.parametrize("value", [b"", b"x", bytes(range(256)), os.urandom(FIVE_MIB)], ids=len)
    def test_put_get_round_trip(self, store: ObjectStore, value: bytes) -> None:
        store.put("a/b/value", value)
        assert store.get("a/b/value") == value
        assert store.size("a/b/value") == len(value)

    def test_put_overwrites(self, store: ObjectStore) -> None:
        store.put("k", b"old value")
        store.put("k", b"new")
        assert store.get("k") == b"new"
        assert store.size("k") == 3

    def test_get_missing_raises_not_found_with_key(self, store: ObjectStore) -> None:
        with pytest.raises(NotFound) as info:
            store.get("no/such/key")
        assert info.value.key == "no/such/key"

    def test_a_prefix_of_keys_is_not_a_key(self, store: ObjectStore) -> None:
        store.put("dir/file", b"x")
        for call in (store.get, store.size):
            with pytest.raises(NotFound):
                call("dir")

    def test_get_range_of_a_prefix_of_keys_is_not_found(self, store: ObjectStore) -> None:
        store.put("dir/file", b"x")
        with pytest.raises(NotFound):
            store.get_range("dir", 0, 1)

    # --- put_if_absent ---

    def test_put_if_absent_creates_once(self, store: ObjectStore) -> None:
        assert store.put_if_absent("commit/1", b"first") is True
        assert store.put_if_absent("commit/1", b"second") is False
        assert store.get("commit/1") == b"first"

    def test_put_if_absent_over_put_returns_false(self, store: ObjectStore) -> None:
        store.put("k", b"put")
        assert store.put_if_absent("k", b"other") is False
        assert store.get("k") == b"put"

    def test_put_if_absent_empty_value(self, store: ObjectStore) -> None:
        assert store.put_if_absent("empty", b"") is True
        assert store.put_if_absent("empty", b"x") is False
        assert store.get("empty") == b""

    def test_concurrent_put_if_absent_has_one_winner(self, store: ObjectStore) -> None:
        n = 8
        barrier = threading.Barrier(n)
        results: list[tuple[bool, bytes]] = []
        errors: list[BaseException] = []

        def contend(i: int) -> None:
            value = f"writer {i}".encode() * 1000
            barrier.wait()
            try:
                results.append((store.put_if_absent("race", value), value))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors
        winners = [value for created, value in results if created]
        assert len(results) == n and len(winners) == 1
        assert store.get("race") == winners[0]

    # --- get_range / size ---

    def test_get_range(self, store: ObjectStore) -> None:
        data = bytes(range(100))
        store.put("r", data)
        assert store.get_range("r", 10, 5) == data[10:15]
        assert store.get_range("r", 0, 100) == data
        assert store.get_range("r", 95, 10) == data[95:]
        assert store.get_range("r", 99, 1) == data[99:]
        assert store.get_range("r", 100, 10) == b""
        assert store.get_range("r", 1000, 10) == b""
        assert store.get_range("r", 10, 0) == b""

    def test_get_range_of_empty_object(self, store: ObjectStore) -> None:
        store.put("empty", b"")
        assert store.get_range("empty", 0, 10) == b""

    def test_get_range_and_size_of_missing_key(self, store: ObjectStore) -> None:
        with pytest.raises(NotFound) as info:
            store.get_range("missing", 0, 10)
        assert info.value.key == "missing"
        with pytest.raises(NotFound) as info:
            store.size("missing")
        assert info.value.key == "missing"

    # --- list ---

    def test_list_empty_store(self, store: ObjectStore) -> None:
        assert list(store.list()) == []
        assert list(store.list("a/")) == []

    def test_list_by_prefix_sorted(self, store: ObjectStore) -> None:
        keys = ["b", "a/b/c", "a/bc/d", "a/bd", "ab/x", "A", "a-1", "a.1", "a_1", "a0", "a/b/e/f"]
        for key in keys:
            store.put(key, key.encode())
        assert list(store.list()) == sorted(keys)
        assert list(store.list("a/b")) == ["a/b/c", "a/b/e/f", "a/bc/d", "a/bd"]
        assert list(store.list("a/b/")) == ["a/b/c", "a/b/e/f"]
        assert list(store.list("a")) == sorted(k for k in keys if k.startswith("a"))
        assert list(store.list("ab/x")) == ["ab/x"]
        assert list(store.list("zz")) == []

    def test_list_skips_debris(self, store: ObjectStore) -> None:
        store.put("d/real", b"x")
        self.leave_debris(store, "d/")
        assert list(store.list()) == ["d/real"]
        assert list(store.list("d/")) == ["d/real"]

    # --- delete ---

    def test_delete_is_idempotent(self, store: ObjectStore) -> None:
        store.put("gone", b"x")
        store.delete("gone")
        store.delete("gone")
        store.delete("never/was")
        with pytest.raises(NotFound):
            store.get("gone")
        assert list(store.list()) == []

    def test_put_if_absent_after_delete(self, store: ObjectStore) -> None:
        assert store.put_if_absent("k", b"1") is True
        store.delete("k")
        assert store.put_if_absent("k", b"2") is True
        assert store.get("k") == b"2"

    # --- keys ---

    @pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
    def test_invalid_keys_rejected(self, store: ObjectStore, key: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: store.put(key, b"x"),
            lambda: store.put_if_absent(key, b"x"),
            lambda: store.get(key),
            lambda: store.get_range(key, 0, 1),
            lambda: store.size(key),
            lambda: store.delete(key),
        ]
        for call in calls:
            with pytest.raises(BadInput):
                call()
