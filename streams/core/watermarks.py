"""Event-time progress: per raw partition at ingest, and the low watermark the agent closes on.

Ingest keeps, for every raw partition it owns, the highest event time it has read. A
partition that has had no message for ``idle_timeout`` lets its watermark advance with the
wall clock from there, so a quiet partition cannot hold windows open forever; a partition
that never had an event is left out while it is idle. The watermark a partition has
published never goes back, and it is committed with the partition's offsets, so the next
owner after a rebalance or a crash starts from it.

Every flush sends the watermarks of the flushed raw partitions to every delta partition, after
that flush's deltas. The agent keeps the newest mark of each raw partition and closes a window
once the low watermark (the minimum over all raw partitions) passes the window's end plus the
grace period. Lateness is decided at ingest against the event's own raw partition's watermark:
an event whose window's end + grace + retention is at or below it is past retention for that
window size and is not counted in it.

When the raw topic is repartitioned by subject, each partition of the repartitioned topic
holds events of every raw partition. The repartition stage keeps each raw partition's
watermark (``PartitionWatermarks``), stamps every copied event with it, and sends it to every
repartitioned partition after each batch; ingest judges an event by its stamp, keeps what each
raw partition has reached as read on its partition (``ForwardedWatermarks``), and marks every
(repartitioned partition, raw partition) pair, so a lagging raw partition holds windows open
on both paths alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from streams.contracts.deltas import WatermarkMark
from streams.core.windows import WindowPolicy


@dataclass(slots=True)
class _PartitionClock:
    max_event_time: float | None
    published: float | None
    last_arrival: float


class PartitionWatermarks:
    """Ingest's watermark per raw partition; ``now`` is a monotonic clock in seconds."""

    def __init__(self, idle_timeout_seconds: float, now: Callable[[], float]) -> None:
        self.idle_timeout = idle_timeout_seconds
        self.now = now
        self._clocks: dict[int, _PartitionClock] = {}

    def assign(self, partition: int, committed: float | None) -> None:
        """A partition assigned here, starting from the watermark committed by its last owner."""
        self._clocks[partition] = _PartitionClock(committed, committed, self.now())

    def revoke(self, partition: int) -> None:
        self._clocks.pop(partition, None)

    @property
    def partitions(self) -> list[int]:
        return sorted(self._clocks)

    def arrived(self, partition: int) -> None:
        """A message arrived (of any kind): the partition is not idle."""
        clock = self._clock(partition)
        clock.last_arrival = self.now()

    def observed(self, partition: int, event_time: float) -> None:
        """A valid event (counted, late or a duplicate) was read at ``event_time``."""
        clock = self._clock(partition)
        if clock.max_event_time is None or event_time > clock.max_event_time:
            clock.max_event_time = event_time

    def idle(self, partition: int) -> bool:
        clock = self._clocks.get(partition)
        return clock is not None and self.now() - clock.last_arrival >= self.idle_timeout

    def current(self, partition: int) -> float | None:
        """The partition's watermark: max event time, advanced by the time spent idle past the
        timeout, never below what was published; whole seconds while idle, so an idle
        partition's mark changes once a second, not on every flush."""
        clock = self._clocks.get(partition)
        if clock is None:
            return None
        if clock.max_event_time is None:
            return clock.published
        idle_for = self.now() - clock.last_arrival - self.idle_timeout
        candidate = clock.max_event_time + (math.floor(idle_for) if idle_for > 0 else 0)
        if clock.published is not None and clock.published > candidate:
            return clock.published
        return candidate

    def publish(self, partition: int) -> float | None:
        """The watermark to send (and commit) now; it becomes the floor from here on."""
        clock = self._clock(partition)
        clock.published = self.current(partition)
        return clock.published

    def _clock(self, partition: int) -> _PartitionClock:
        clock = self._clocks.get(partition)
        if clock is None:
            clock = self._clocks[partition] = _PartitionClock(None, None, self.now())
        return clock


@dataclass(slots=True)
class _Forwarded:
    watermark: float | None
    idle: bool


class ForwardedWatermarks:
    """How far each raw partition has come, as read on the repartitioned partitions this
    ingest owns: the repartition stage's marks, and the stamps and times of the events read.

    Each value can only be at or below the stamp of any later event of that raw partition on
    that repartitioned partition (stamps and marks are the raw partition's own watermark as it
    grew), so a mark published from it never passes an event still to be counted."""

    def __init__(self) -> None:
        self._views: dict[int, dict[int, _Forwarded]] = {}

    def assign(self, counted_partition: int) -> None:
        self._views[counted_partition] = {}

    def revoke(self, counted_partition: int) -> None:
        self._views.pop(counted_partition, None)

    def forwarded(
        self, counted_partition: int, raw_partition: int, watermark: float | None, idle: bool
    ) -> None:
        """A mark of the repartition stage: the raw partition's watermark after a batch."""
        view = self._view(counted_partition, raw_partition)
        if watermark is not None and (view.watermark is None or watermark > view.watermark):
            view.watermark = watermark
        view.idle = idle

    def observed(
        self, counted_partition: int, raw_partition: int, stamp: float | None, event_time: float
    ) -> None:
        """A valid event of the raw partition, stamped with its watermark before the event."""
        view = self._view(counted_partition, raw_partition)
        reached = event_time if stamp is None else max(stamp, event_time)
        if view.watermark is None or reached > view.watermark:
            view.watermark = reached
        view.idle = False

    def views(self, counted_partition: int) -> dict[int, tuple[float | None, bool]]:
        """Raw partition -> (watermark, idle), as read on ``counted_partition``."""
        return {p: (v.watermark, v.idle) for p, v in sorted(self._views.get(counted_partition, {}).items())}

    def _view(self, counted_partition: int, raw_partition: int) -> _Forwarded:
        views = self._views.setdefault(counted_partition, {})
        view = views.get(raw_partition)
        if view is None:
            view = views[raw_partition] = _Forwarded(None, False)
        return view


@dataclass(frozen=True, slots=True)
class Lateness:
    """Which window sizes an event is too late for, against its partition's watermark."""

    policy: WindowPolicy

    def missed_sizes(self, event_time: float, watermark: float | None) -> tuple[int, ...]:
        policy = self.policy
        if watermark is None or event_time + policy.grace_seconds + policy.retention_seconds > watermark:
            return ()  # every window ends after the event: none of them can be missed
        return tuple(
            size
            for size, start in policy.windowing.starts(event_time)
            if policy.expires_at(size, start) <= watermark
        )


Source = tuple[int, int]


def expected_sources(raw_partitions: int, counted_partitions: int | None) -> list[Source]:
    """The (counted partition, raw partition) pairs windows wait for: each raw partition
    itself when ingest counts the raw topic, else every raw partition as read on every
    partition of the repartitioned topic."""
    if counted_partitions is None:
        return [(p, p) for p in range(raw_partitions)]
    return [(q, p) for q in range(counted_partitions) for p in range(raw_partitions)]


def low_watermark(marks: Mapping[Source, WatermarkMark], sources: Iterable[Source]) -> float | None:
    """The event time every source has passed; None until all of them have reported.

    Idle sources without any event are left out; when no source has a watermark, there is
    nothing to close on.
    """
    expected = list(sources)
    if not expected or any(source not in marks for source in expected):
        return None
    values = []
    for mark in (marks[source] for source in expected):
        if mark.watermark is None:
            if not mark.idle:
                return None
            continue
        values.append(mark.watermark)
    return min(values) if values else None
