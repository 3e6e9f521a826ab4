from collections import Counter

from streams.attribution import Attribution
from streams.kpis import ALL, Delta, DeltaAggregator, KpiKey, KpiState, apply_delta, kpi_update, window_start


def test_window_start_is_floor_of_event_time() -> None:
    assert window_start(119.999, 60) == 60
    assert window_start(120.0, 60) == 120
    assert window_start(-0.5, 60) == -60


def test_aggregator_rolls_cells_up_to_channel_campaign_and_overall() -> None:
    aggregator = DeltaAggregator(60, "/blog/")
    views = [
        (10.0, "organic_search", "a", "/blog/x"),
        (20.0, "organic_search", "b", "/"),
        (70.0, "organic_search", "a", "/"),
        (30.0, "email", "a", "/blog/"),
    ]
    for t, channel, campaign, path in views:
        aggregator.add_page_view(t, Attribution(channel, campaign, "rule"), path)
    deltas = {d.key: d.count for d in aggregator.drain()}
    expected: Counter[KpiKey] = Counter()
    for t, channel, campaign, path in views:
        start = int(t // 60) * 60
        kpis = (
            ["page_views"]
            + (["organic_traffic"] if channel == "organic_search" else [])
            + (["blog_traffic"] if path.startswith("/blog/") else [])
        )
        for kpi in kpis:
            for dims in ((channel, ALL), (ALL, campaign), (ALL, ALL)):
                expected[KpiKey(kpi, 60, start, *dims)] += 1
    assert deltas == dict(expected)
    assert len(aggregator) == 0 and aggregator.drain() == []


def test_apply_delta_skips_replays_at_or_below_the_applied_offset() -> None:
    delta = Delta(
        schema_version="1-0-0", kpi="k", window_seconds=60, window_start=0, channel=ALL, campaign=ALL, count=3
    )
    first = apply_delta(None, delta, offset=10)
    assert first == KpiState(count=3, applied_offset=10)
    assert apply_delta(first, delta, offset=10) is None
    assert apply_delta(first, delta, offset=9) is None
    assert apply_delta(first, delta, offset=11) == KpiState(count=6, applied_offset=11)


def test_key_round_trips_whatever_the_campaign_holds() -> None:
    key = KpiKey("organic_traffic", 60, 1_800_000_000, ALL, 'odd|"name",[x]')
    assert KpiKey.decode(key.encode()) == key


def test_update_carries_window_bounds() -> None:
    update = kpi_update(KpiKey("page_views", 60, 120, "email", ALL), KpiState(4, 1))
    assert (update.window_end - update.window_start).total_seconds() == 60
    assert update.value == 4
