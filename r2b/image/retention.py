"""Which backups to keep: restic's and Proxmox Backup Server's rules, as a pure function.

Backups are taken newest first. ``keep_last`` keeps the N newest. ``keep_daily`` keeps the
newest backup of each of the N most recent days that have backups; weekly (ISO weeks) and
monthly likewise. A backup kept by any rule is kept. With no rule at all nothing is removed:
an empty policy is a mistake, not an order to delete everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly)


Bucket = Callable[[datetime], object]

_BUCKETS: dict[str, Bucket] = {
    "keep_daily": lambda t: t.date(),
    "keep_weekly": lambda t: t.isocalendar()[:2],
    "keep_monthly": lambda t: (t.year, t.month),
}


def select_kept(backups: Sequence[tuple[str, datetime]], policy: RetentionPolicy) -> set[str]:
    """The ids of ``backups`` (id, time), given oldest first, that ``policy`` keeps.

    Equal times (one-second resolution) keep the given order: the later one is newer.
    """
    if policy.empty:
        return {b for b, _ in backups}
    newest_first = sorted(reversed(backups), key=lambda item: item[1], reverse=True)
    kept = {b for b, _ in newest_first[: policy.keep_last]}
    for rule, bucket in _BUCKETS.items():
        kept |= _newest_per_bucket(newest_first, bucket, getattr(policy, rule))
    return kept


def _newest_per_bucket(
    newest_first: Sequence[tuple[str, datetime]], bucket: Bucket, count: int
) -> set[str]:
    kept: set[str] = set()
    last: object = None
    for backup, moment in newest_first:
        if len(kept) >= count:
            break
        key = bucket(moment)
        if key != last:
            kept.add(backup)
            last = key
    return kept
