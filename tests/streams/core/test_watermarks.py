"""Watermarks per raw partition, idleness, lateness and the low watermark, on a fake clock."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from streams.contracts.deltas import WatermarkMark
from streams.core.watermarks import (
    ForwardedWatermarks,
    Lateness,
    PartitionWatermarks,
    expected_sources,
    low_watermark,
)
from streams.core.windows import Windowing, WindowPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mark(partition: int, watermark: float | None, idle: bool = False, of: int = 3) -> WatermarkMark:
    return WatermarkMark(
        schema_version="1-0-0", raw_partition=partition, raw_partitions=of, watermark=watermark, idle=idle
    )


def test_watermark_is_the_highest_counted_event_time_and_never_goes_back() -> None:
    clock = FakeClock()
    marks = PartitionWatermarks(idle_timeout_seconds=30, now=clock)
    assert marks.current(0) is None
    marks.observed(0, 500.0)
    marks.observed(0, 450.0)
    assert marks.publish(0) == 500.0
    marks.observed(0, 520.0)
    assert marks.current(0) == 520.0


def test_an_idle_partition_advances_with_the_wall_clock_after_the_timeout() -> None:
    clock = FakeClock()
    marks = PartitionWatermarks(idle_timeout_seconds=30, now=clock)
    marks.arrived(0)
    marks.observed(0, 500.0)
    clock.now += 29.9
    assert (marks.current(0), marks.idle(0)) == (500.0, False)
    clock.now += 10.6  # 40.5 s without a message: 10 whole seconds past the timeout
    assert (marks.current(0), marks.idle(0)) == (510.0, True)
    assert marks.publish(0) == 510.0
    marks.arrived(0)
    marks.observed(0, 505.0)
    assert (marks.current(0), marks.idle(0)) == (510.0, False), "what was published is a floor"


def test_a_restored_partition_starts_from_the_committed_watermark_and_is_not_idle() -> None:
    clock = FakeClock()
    marks = PartitionWatermarks(idle_timeout_seconds=30, now=clock)
    marks.assign(4, 777.0)
    assert (marks.current(4), marks.idle(4), marks.partitions) == (777.0, False, [4])
    marks.observed(4, 700.0)
    assert marks.current(4) == 777.0
    marks.revoke(4)
    assert marks.partitions == []


def test_lateness_is_per_window_size_against_end_plus_grace_plus_retention() -> None:
    lateness = Lateness(
        WindowPolicy(Windowing((60, 3600), ZoneInfo("UTC")), grace_seconds=10, retention_seconds=100)
    )
    event = 3600 * 5 + 30  # minute window ends at +60, hour window at 3600 * 6
    assert lateness.missed_sizes(event, None) == ()
    assert lateness.missed_sizes(event, 3600 * 5 + 60 + 110 - 1) == ()
    assert lateness.missed_sizes(event, 3600 * 5 + 60 + 110) == (60,)
    assert lateness.missed_sizes(event, 3600 * 6 + 110) == (60, 3600)


def test_low_watermark_needs_every_raw_partition_and_skips_idle_ones_without_events() -> None:
    three = expected_sources(3, None)
    assert low_watermark({(0, 0): mark(0, 100.0), (1, 1): mark(1, 90.0)}, three) is None, (
        "partition 2 never reported"
    )
    assert (
        low_watermark({(0, 0): mark(0, 100.0), (1, 1): mark(1, 90.0), (2, 2): mark(2, 95.0)}, three) == 90.0
    )
    assert (
        low_watermark({(0, 0): mark(0, 100.0), (1, 1): mark(1, 90.0), (2, 2): mark(2, None)}, three) is None
    )
    assert (
        low_watermark(
            {(0, 0): mark(0, 100.0), (1, 1): mark(1, 90.0), (2, 2): mark(2, None, idle=True)}, three
        )
        == 90.0
    )
    assert low_watermark({(0, 0): mark(0, None, idle=True)}, expected_sources(1, None)) is None


def test_every_raw_partition_on_every_repartitioned_partition_is_a_source() -> None:
    assert expected_sources(2, None) == [(0, 0), (1, 1)]
    assert expected_sources(2, 3) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_a_forwarded_view_follows_marks_stamps_and_events_and_never_goes_back() -> None:
    views = ForwardedWatermarks()
    views.assign(4)
    assert views.views(4) == {}
    views.forwarded(4, 1, 100.0, idle=False)
    views.observed(4, 1, stamp=120.0, event_time=110.0)
    assert views.views(4) == {1: (120.0, False)}, "the stamp: the raw partition was there already"
    views.observed(4, 1, stamp=125.0, event_time=130.0)
    assert views.views(4) == {1: (130.0, False)}
    views.forwarded(4, 1, 90.0, idle=True)
    assert views.views(4) == {1: (130.0, True)}, (
        "an older mark does not move it back; idle is the stage's word"
    )
    views.observed(4, 0, stamp=None, event_time=50.0)
    assert views.views(4) == {0: (50.0, False), 1: (130.0, True)}
    views.revoke(4)
    assert views.views(4) == {}
