from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from streams.contracts.deltas import (
    ALL,
    ALL_TIME,
    DELTAS_PER_MESSAGE,
    CellKey,
    Delta,
    WatermarkMark,
    series_partition,
)
from streams.contracts.outputs import KpiKey
from streams.core.aggregation import DeltaAggregator, delta_batches
from streams.core.attribution import Attribution
from streams.core.catalog import CATALOG, MEASURES, evaluate
from streams.core.cells import CellState, apply_delta, kpi_updates
from streams.core.closing import close_cell
from streams.core.windows import Windowing, parse_sizes

UTC_WINDOWS = Windowing((60, 3600, 86400), ZoneInfo("UTC"))


def test_aggregator_rolls_cells_up_to_channel_campaign_drill_down_and_overall_in_every_window_size() -> None:
    aggregator = DeltaAggregator(UTC_WINDOWS)
    events = [
        (10.0, "organic_search", "a", [("page_views", 1), ("organic_page_views", 1)]),
        (20.0, "organic_search", "b", [("page_views", 1)]),
        (70.0, "organic_search", "a", [("page_views", 1)]),
        (30.0, "email", "a", [("engagements", 1), ("engaged_ms", 4000)]),
    ]
    for t, channel, campaign, measures in events:
        aggregator.add(t, Attribution(channel, campaign, "rule"), measures)
    deltas = {d.key: d.measures for d in aggregator.drain()}
    expected: dict[CellKey, Counter[str]] = {}
    for t, channel, campaign, measures in events:
        for size in (60, 3600, 86400):
            start = int(t // size) * size
            for dims in ((channel, ALL), (ALL, campaign), (channel, campaign), (ALL, ALL)):
                expected.setdefault(CellKey(size, start, *dims), Counter()).update(dict(measures))
    assert deltas == {k: dict(v) for k, v in expected.items()}
    assert len(aggregator) == 0 and aggregator.drain() == []


def test_apply_delta_skips_replays_at_or_below_the_applied_offset() -> None:
    delta = Delta(
        window_seconds=60,
        window_start=0,
        channel=ALL,
        campaign=ALL,
        measures={"leads": 3},
    )
    first = apply_delta(None, delta, offset=10, partition=2)
    assert first == CellState(measures={"leads": 3}, applied_offset=10, partition=2)
    assert apply_delta(first, delta, offset=10, partition=2) is None
    assert apply_delta(first, delta, offset=9, partition=2) is None
    assert apply_delta(first, delta, offset=11, partition=2) == CellState(
        measures={"leads": 6}, applied_offset=11, partition=2
    )


def test_a_delta_for_a_closed_window_makes_the_next_revision() -> None:
    delta = Delta(
        window_seconds=60,
        window_start=0,
        channel=ALL,
        campaign=ALL,
        measures={"leads": 1},
    )
    open_cell = apply_delta(None, delta, offset=1, partition=0)
    assert open_cell is not None and open_cell.revision is None
    closed = close_cell(open_cell, closed_by=2)
    late = apply_delta(closed, delta, offset=3, partition=0, window_closed=True)
    assert late is not None and (late.revision, late.closed_by, late.measures) == (1, 2, {"leads": 2})
    later = apply_delta(late, delta, offset=4, partition=0, window_closed=True)
    assert later is not None and later.revision == 2
    assert apply_delta(later, delta, offset=4, partition=0, window_closed=True) is None, "replay"
    newcomer = apply_delta(None, delta, offset=5, partition=0, window_closed=True)
    assert newcomer is not None and newcomer.revision == 0, "a cell new to a closed window starts at 0"
    updates = kpi_updates(CellKey(60, 0, ALL, ALL), later, {"leads"}, 60)
    assert updates and all(u.final and u.revision == 2 for _, u in updates)
    assert not any(u.final for _, u in kpi_updates(CellKey(60, 0, ALL, ALL), open_cell, {"leads"}, 60))


def test_key_round_trips_whatever_the_campaign_holds() -> None:
    key = KpiKey("organic_traffic", 60, 1_800_000_000, ALL, 'odd|"name",[x]')
    assert KpiKey.decode(key.encode()) == key


def test_ratios_travel_with_numerator_and_denominator() -> None:
    state = CellState(
        measures={"email_unique_opens": 30, "emails_delivered": 120, "engaged_ms": 9000, "engagements": 3},
        applied_offset=1,
        partition=0,
    )
    updates = {
        k.kpi: u
        for k, u in kpi_updates(
            CellKey(3600, 0, "email", ALL), state, {"email_unique_opens", "engaged_ms"}, 3600
        )
    }
    assert set(updates) == {"email_open_rate", "time_on_page_seconds"}
    assert (
        updates["email_open_rate"].value,
        updates["email_open_rate"].numerator,
        updates["email_open_rate"].denominator,
    ) == (0.25, 30, 120)
    assert updates["time_on_page_seconds"].value == 3.0
    assert (
        updates["email_open_rate"].window_end - updates["email_open_rate"].window_start
    ).total_seconds() == 3600


def test_a_ratio_without_denominator_has_no_value_and_net_kpis_subtract() -> None:
    kpis = {kpi.name: kpi for kpi in CATALOG}
    assert evaluate(kpis["email_open_rate"], {"email_unique_opens": 2}).value is None
    assert evaluate(kpis["net_follows"], {"follows": 5, "unfollows": 7}).value == -2


def test_every_kpi_input_is_a_known_measure() -> None:
    assert all(kpi.inputs <= set(MEASURES) for kpi in CATALOG)


def test_day_windows_follow_the_time_zone_including_daylight_saving_days() -> None:
    berlin = Windowing((86400,), ZoneInfo("Europe/Berlin"))
    instant = 1_774_740_000  # 2026-03-28 23:20 UTC = 2026-03-29 00:20 CET, the spring-forward day
    start = berlin.start(86400, instant)
    assert start == 1_774_738_800  # 2026-03-28 23:00 UTC = local midnight
    assert berlin.end(86400, start) - start == 23 * 3600
    tehran = Windowing((86400,), ZoneInfo("Asia/Tehran"))
    assert tehran.start(86400, 1_795_737_600) == 1_795_725_000  # 2026-11-27 00:00+03:30


def test_day_starts_are_local_midnights_in_zones_with_odd_offsets_and_across_dst_changes() -> None:
    """The quarter-hour cache in ``Windowing.start`` agrees with a direct computation."""
    for name in (
        "Asia/Tehran",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "America/St_Johns",
    ):
        zone = ZoneInfo(name)
        windowing = Windowing((86400,), zone)
        for instant in range(1_774_000_000, 1_776_000_000, 417):  # March-April 2026, every 7 minutes
            local = datetime.fromtimestamp(instant, UTC).astimezone(zone)
            midnight = int(datetime(local.year, local.month, local.day, tzinfo=zone).timestamp())
            assert windowing.start(86400, instant) == midnight, (name, instant)


def test_window_sizes_must_divide_a_day() -> None:
    assert parse_sizes("3600, 60,86400") == (60, 3600, 86400)
    for bad in ("", "7", "0", "90000"):
        try:
            parse_sizes(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_subscriber_measures_also_count_in_the_running_total_cells() -> None:
    aggregator = DeltaAggregator(Windowing((60,), ZoneInfo("UTC")))
    video = Attribution("organic_video", "(none)", "intrinsic: social")
    aggregator.add(120.0, video, [("subscribes", 1)])
    aggregator.add(7200.0, video, [("unsubscribes", 1)], skip_sizes=(60,))
    aggregator.add(130.0, video, [("follows", 1)])
    totals = {(d.channel, d.campaign): d.measures for d in aggregator.drain() if d.window_seconds == ALL_TIME}
    assert totals == {
        ("organic_video", ALL): {"subscribes": 1, "unsubscribes": 1},
        (ALL, "(none)"): {"subscribes": 1, "unsubscribes": 1},
        ("organic_video", "(none)"): {"subscribes": 1, "unsubscribes": 1},
        (ALL, ALL): {"subscribes": 1, "unsubscribes": 1},
    }


def test_delta_batches_put_each_series_on_its_partition_with_the_marks_after_its_deltas() -> None:
    deltas = [
        Delta(
            window_seconds=60,
            window_start=60 * i,
            channel=f"c{i % 7}",
            campaign=f"k{i % 5}",
            measures={"leads": 1},
        )
        for i in range(3 * DELTAS_PER_MESSAGE)
    ]
    mark = WatermarkMark(schema_version="1-0-0", raw_partition=0, raw_partitions=1, watermark=5.0, idle=False)
    batches = delta_batches(deltas, [mark], partitions=4)
    sent = [(partition, delta) for partition, batch in batches for delta in batch.deltas]
    assert sorted(sent, key=lambda pair: pair[1].window_start) == [
        (series_partition(d.channel, d.campaign, 4), d) for d in deltas
    ], "every delta once, on its series' partition"
    assert all(len(batch.deltas) <= DELTAS_PER_MESSAGE for _, batch in batches)
    for partition in range(4):
        mine = [batch for p, batch in batches if p == partition]
        assert mine, f"partition {partition} gets a message (with the marks) even without deltas"
        assert mine[-1].marks == [mark] and all(not batch.marks for batch in mine[:-1])


def test_a_flush_without_marks_sends_only_to_partitions_with_deltas() -> None:
    delta = Delta(window_seconds=60, window_start=0, channel="email", campaign="a", measures={"leads": 2})
    ((partition, batch),) = delta_batches([delta], [], partitions=6)
    assert partition == series_partition("email", "a", 6)
    assert batch.deltas == [delta] and batch.marks == []
