"""The retention rules, with the clock in the test's hands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from r2b.image.retention import RetentionPolicy, select_kept

START = datetime(2026, 1, 1, 12, tzinfo=UTC)


def series(hours: list[int]) -> list[tuple[str, datetime]]:
    return [(f"b{i}", START + timedelta(hours=h)) for i, h in enumerate(hours)]


def test_keep_last_keeps_the_newest() -> None:
    backups = series([0, 1, 2, 3, 4])
    assert select_kept(backups, RetentionPolicy(keep_last=2)) == {"b3", "b4"}


def test_keep_daily_keeps_the_newest_of_each_recent_day() -> None:
    # two backups a day for five days
    backups = series([d * 24 + h for d in range(5) for h in (1, 9)])
    kept = select_kept(backups, RetentionPolicy(keep_daily=3))
    assert kept == {"b9", "b7", "b5"}


def test_weekly_and_monthly_buckets() -> None:
    backups = series([d * 24 for d in range(70)])  # one a day from Jan 1 for 70 days
    kept = select_kept(backups, RetentionPolicy(keep_weekly=2, keep_monthly=3))
    # newest: Mar 11 (b69); weekly: Mar 11 (week 11) and Mar 8 (Sunday, week 10)
    # monthly: Mar 11, Feb 28 (b58), Jan 31 (b30)
    assert kept == {"b69", "b66", "b58", "b30"}


def test_an_empty_policy_removes_nothing() -> None:
    backups = series([0, 1, 2])
    assert select_kept(backups, RetentionPolicy()) == {"b0", "b1", "b2"}


@given(
    st.lists(st.integers(0, 24 * 400), min_size=1, max_size=60, unique=True),
    st.integers(0, 5), st.integers(0, 5), st.integers(0, 5), st.integers(0, 5),
)
def test_rules_keep_subsets_and_the_newest(
    hours: list[int], last: int, daily: int, weekly: int, monthly: int
) -> None:
    backups = series(hours)
    policy = RetentionPolicy(last, daily, weekly, monthly)
    kept = select_kept(backups, policy)
    assert kept <= {b for b, _ in backups}
    newest = max(backups, key=lambda b: b[1])[0]
    assert newest in kept  # every non-empty rule keeps the newest; empty keeps all
    assert len(kept) <= (len(backups) if policy.empty else last + daily + weekly + monthly)


def test_equal_times_keep_the_later_backup() -> None:
    backups = [("b0", START), ("b1", START), ("b2", START)]
    assert select_kept(backups, RetentionPolicy(keep_last=1)) == {"b2"}
