"""Event-time tumbling windows: which windows an instant falls in, and where each one ends.

Windows shorter than a day are aligned to the Unix epoch (UTC). Day windows run from local
midnight to local midnight in the configured time zone, so a day can last 23 or 25 hours
around a daylight-saving change; a day window is still labelled with size 86400.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

DAY = 86400


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
        local = datetime.fromtimestamp(epoch_seconds, UTC).astimezone(self.day_zone)
        midnight = datetime(local.year, local.month, local.day, tzinfo=self.day_zone)
        return int(midnight.timestamp())

    def end(self, size: int, start: int) -> int:
        """Exclusive end of the window starting at ``start``."""
        if size != DAY:
            return start + size
        local = datetime.fromtimestamp(start, UTC).astimezone(self.day_zone)
        next_day = local.date() + timedelta(days=1)
        return int(datetime(next_day.year, next_day.month, next_day.day, tzinfo=self.day_zone).timestamp())


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"60,3600,86400"`` -> (60, 3600, 86400); each a divisor of a day."""
    sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    if not sizes or any(size <= 0 or DAY % size for size in sizes):
        raise ValueError("window sizes must be positive divisors of 86400 seconds, e.g. 60,3600,86400")
    return sizes
