"""The window life cycle on one delta partition: closing, replays of marks, expiry."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from streams.contracts.deltas import ALL, ALL_TIME, CellKey, WatermarkMark
from streams.core.cells import CellState
from streams.core.closing import PartitionWindows, close_cell, merge_mark
from streams.core.windows import Windowing, WindowPolicy

GRACE, RETENTION = 10, 120


def mark(partition: int, watermark: float | None, idle: bool = False) -> WatermarkMark:
    return WatermarkMark(
        schema_version="1-0-0", raw_partition=partition, raw_partitions=2, watermark=watermark, idle=idle
    )


def state(revision: int | None = None, closed_by: int | None = None) -> CellState:
    return CellState(
        measures={"page_views": 1}, applied_offset=1, partition=0, revision=revision, closed_by=closed_by
    )


def windows() -> PartitionWindows:
    return PartitionWindows(WindowPolicy(Windowing((60, 3600), ZoneInfo("UTC")), GRACE, RETENTION))


def test_a_window_closes_when_every_raw_partition_passes_its_end_plus_grace() -> None:
    index = windows()
    minute = CellKey(60, 0, ALL, ALL)
    campaign = CellKey(60, 0, ALL, "c1")
    hour = CellKey(3600, 0, ALL, ALL)
    for key in (minute, campaign, hour):
        index.add(key, state())
    index.record_mark(mark(0, 200.0))
    assert index.due() == [], "raw partition 1 has not reported"
    index.record_mark(mark(1, 69.0))
    assert index.due() == [] and not index.is_closed(minute)
    index.record_mark(mark(1, 70.0))
    assert index.due() == [minute, campaign]
    assert index.due() == [], "each cell is due once"
    assert index.is_closed(minute) and not index.is_closed(hour)


def test_a_cell_added_closed_is_not_due_and_is_found_by_the_mark_that_closed_it() -> None:
    index = windows()
    key = CellKey(60, 0, "email", ALL)
    index.add(key, state())
    index.add(key, close_cell(state(), closed_by=42))
    index.record_mark(mark(0, 100.0))
    index.record_mark(mark(1, 100.0))
    assert index.due() == []
    assert index.closed_by(42) == {key} and index.closed_by(41) == set()


def test_cells_expire_at_end_plus_grace_plus_retention() -> None:
    index = windows()
    key = CellKey(60, 0, ALL, ALL)
    index.add(key, close_cell(state(), closed_by=7))
    index.record_mark(mark(0, 1000.0))
    index.record_mark(mark(1, 60 + GRACE + RETENTION - 1))
    assert index.expired() == [] and not index.is_expired(key)
    index.record_mark(mark(1, 60 + GRACE + RETENTION))
    assert index.is_expired(key)
    assert index.expired() == [key]
    assert len(index) == 0 and index.closed_by(7) == set()


def test_kept_cells_expire_at_a_later_call_and_stay_found_by_their_closing_mark() -> None:
    # The message that expires these cells also changed one of them (``changed``): it stays
    # stored and indexed until the next mark, so a replay of the message can publish it again.
    index = windows()
    changed, untouched = CellKey(60, 0, ALL, "c1"), CellKey(60, 0, ALL, "c2")
    for key in (changed, untouched):
        index.add(key, close_cell(state(), closed_by=7))
    index.record_mark(mark(0, 1000.0))
    index.record_mark(mark(1, 1000.0))
    assert index.expired(keep={changed}) == [untouched]
    assert len(index) == 1 and index.closed_by(7) == {changed}
    assert index.expired(keep={changed}) == [], "kept while the caller keeps it"
    assert index.expired() == [changed]
    assert len(index) == 0 and index.closed_by(7) == set()


def test_merge_mark_skips_replays_and_never_moves_a_watermark_back() -> None:
    first = merge_mark(None, mark(0, 100.0), offset=5)
    assert first is not None
    assert merge_mark(first, mark(0, 120.0), offset=5) is None
    lower = merge_mark(first, mark(0, 90.0, idle=True), offset=6)
    assert lower is not None and (lower.mark.watermark, lower.mark.idle, lower.applied_offset) == (
        100.0,
        True,
        6,
    )


def test_running_totals_never_close_or_expire() -> None:
    index = windows()
    total = CellKey(ALL_TIME, ALL_TIME, ALL, ALL)
    index.add(total, state())
    index.record_mark(mark(0, 1e12))
    index.record_mark(mark(1, 1e12))
    assert index.due() == [] and index.expired() == []
    assert not index.is_closed(total) and not index.is_expired(total)


def forwarded(counted: int, raw: int, watermark: float | None, idle: bool = False) -> WatermarkMark:
    return WatermarkMark(
        schema_version="1-1-0",
        raw_partition=raw,
        raw_partitions=2,
        counted_partition=counted,
        counted_partitions=2,
        watermark=watermark,
        idle=idle,
    )


def test_through_the_repartition_a_window_waits_for_every_raw_partition_on_every_counted_one() -> None:
    """Raw partition 1 lags an hour: its events, spread over both repartitioned partitions,
    hold the window open on both, as a lagging partition does when producers key by subject."""
    index = windows()
    minute = CellKey(60, 0, ALL, ALL)
    index.add(minute, state())
    for counted in (0, 1):
        index.record_mark(forwarded(counted, 0, 3600.0))
    index.record_mark(forwarded(0, 1, 70.0))
    assert index.low_watermark is None, "raw partition 1 not yet reported as read on partition 1"
    index.record_mark(forwarded(1, 1, 69.0))
    assert index.low_watermark == 69.0 and index.due() == []
    index.record_mark(forwarded(1, 1, 70.0))
    assert index.due() == [minute]


def test_marks_of_the_other_kind_are_left_out_once_the_newest_says_how_the_topic_is_keyed() -> None:
    """Marks kept from before the raw topic was repartitioned (one per raw partition) do not
    count once marks come per pair, nor the other way round."""
    index = windows()
    index.record_mark(mark(0, 10.0))
    index.record_mark(mark(1, 10.0))
    assert index.low_watermark == 10.0
    for counted in (0, 1):
        for raw in (0, 1):
            index.record_mark(forwarded(counted, raw, 500.0))
    assert index.low_watermark == 500.0
    index.record_mark(mark(0, 20.0))
    assert index.low_watermark == 10.0, "keyed again: the keyed marks count, the pairs do not"
