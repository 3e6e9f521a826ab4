"""Event-time tumbling windows: which windows an instant falls in, and where each one ends.

Windows shorter than a day are aligned to the Unix epoch (UTC). Day windows run from local
midnight to local midnight in the configured time zone, so a day can last 23 or 25 hours
around a daylight-saving change; a day window is still labelled with size 86400.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

DAY = 86400
#: Local midnights fall on a multiple of 15 minutes in UTC in every time zone in use (offsets
#: and daylight-saving changes come in quarter hours), so the day of any instant is the day of
#: its quarter hour: computed once per quarter hour instead of once per event.
QUARTER_HOUR = 900


@dataclass(frozen=True, slots=True)
class Windowing:
    sizes: tuple[int, ...]
    day_zone: ZoneInfo

    def starts(self, epoch_seconds: float) -> list[tuple[int, int]]:
        """(size, window start in Unix seconds) of every window holding the instant."""
        return [(size, self.start(size, epoch_seconds)) for size in self.sizes]

    def start(self, size: int, epoch_seconds: float) -> int:
        if size != DAY:
            return int(epoch_seconds // size) * size
        quarter = int(epoch_seconds // QUARTER_HOUR) * QUARTER_HOUR
        start = _local_midnight(self.day_zone, quarter)
        if quarter + QUARTER_HOUR <= _next_midnight(self.day_zone, start):
            return start
        return _local_midnight(self.day_zone, epoch_seconds)  # a zone with a historical offset

    def end(self, size: int, start: int) -> int:
        """Exclusive end of the window starting at ``start``."""
        if size != DAY:
            return start + size
        return _next_midnight(self.day_zone, start)


@functools.lru_cache(maxsize=4096)
def _local_midnight(zone: ZoneInfo, epoch_seconds: float) -> int:
    local = datetime.fromtimestamp(epoch_seconds, UTC).astimezone(zone)
    return int(datetime(local.year, local.month, local.day, tzinfo=zone).timestamp())


@functools.lru_cache(maxsize=4096)
def _next_midnight(zone: ZoneInfo, midnight: int) -> int:
    local = datetime.fromtimestamp(midnight, UTC).astimezone(zone)
    next_day = local.date() + timedelta(days=1)
    return int(datetime(next_day.year, next_day.month, next_day.day, tzinfo=zone).timestamp())


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """A window's life cycle in event time, in one place: open until it *closes* (its end plus
    the grace period: the final result goes out), then still revised by late events until it
    *expires* (grace plus retention after its end: the cell is deleted, later events are late).
    """

    windowing: Windowing
    grace_seconds: int
    retention_seconds: int

    def closes_at(self, size: int, start: int) -> int:
        return self.windowing.end(size, start) + self.grace_seconds

    def expires_at(self, size: int, start: int) -> int:
        return self.windowing.end(size, start) + self.grace_seconds + self.retention_seconds


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"60,3600,86400"`` -> (60, 3600, 86400); each a divisor of a day."""
    sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    if not sizes or any(size <= 0 or DAY % size for size in sizes):
        raise ValueError("window sizes must be positive divisors of 86400 seconds, e.g. 60,3600,86400")
    return sizes
