"""Grandfather-father-son retention, the way restic's `forget` counts it.

For each policy (daily, weekly, monthly) keep the newest archive of each of the N most recent
periods that have an archive; an archive kept by any policy survives. Pure functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from wpbackup.backup.runs import parse_stamp

PERIODS: dict[str, Callable[[datetime], object]] = {
    "daily": lambda d: d.date(),
    "weekly": lambda d: d.isocalendar()[:2],
    "monthly": lambda d: (d.year, d.month),
}


def keep_reasons(stamps: Iterable[str], daily: int, weekly: int, monthly: int) -> dict[str, list[str]]:
    """Map each stamp to keep to the reasons it is kept (stamps not in the map go)."""
    ordered = sorted(set(stamps), reverse=True)
    counts = {"daily": daily, "weekly": weekly, "monthly": monthly}
    reasons: dict[str, list[str]] = {}
    for policy, period in PERIODS.items():
        seen: list[object] = []
        for stamp in ordered:
            key = period(parse_stamp(stamp))
            if key in seen:
                continue
            if len(seen) >= counts[policy]:
                break
            seen.append(key)
            reasons.setdefault(stamp, []).append(f"{policy} {len(seen)}")
    if ordered:
        reasons.setdefault(ordered[0], []).insert(0, "newest")
    return reasons
