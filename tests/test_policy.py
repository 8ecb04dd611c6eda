"""Full every N: the type of the next requested backup."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from r2b.journal.format import BackupType
from r2b.policy import next_backup_type


def test_first_is_full_then_every_nth() -> None:
    history: list[BackupType] = []
    for _ in range(10):
        history.append(next_backup_type(history, 4))
    assert history == ["full", "incremental", "incremental", "incremental"] * 2 + [
        "full",
        "incremental",
    ]


def test_full_every_one_is_always_full() -> None:
    assert next_backup_type(["full", "full"], 1) == "full"


@given(st.integers(1, 10), st.integers(1, 40))
def test_at_most_n_minus_one_incrementals_in_a_row(n: int, count: int) -> None:
    history: list[BackupType] = []
    for _ in range(count):
        history.append(next_backup_type(history, n))
    run = 0
    for kind in history:
        run = run + 1 if kind == "incremental" else 0
        assert run <= n - 1
