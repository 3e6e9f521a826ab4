"""One finest cell per event, rolled up once per flush: the same deltas as adding every event
to every window size and grain."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from zoneinfo import ZoneInfo

import pytest

from streams.contracts.deltas import CellKey
from streams.core.aggregation import DeltaAggregator, published_cells
from streams.core.attribution import Attribution
from streams.core.windows import Windowing


@pytest.mark.parametrize(
    ("sizes", "zone", "unit"),
    [
        ((60, 3600, 86400), "UTC", 60),
        ((3600, 5400), "UTC", 1800),
        ((7200, 86400), "Asia/Kathmandu", 900),  # local midnight at 18:15 UTC
        ((60, 86400), "America/New_York", 60),  # a daylight-saving change in the span
    ],
)
def test_rolled_up_finest_cells_equal_every_event_in_every_cell(
    sizes: tuple[int, ...], zone: str, unit: int
) -> None:
    windowing = Windowing(sizes, ZoneInfo(zone))
    aggregator = DeltaAggregator(windowing)
    assert aggregator.unit == unit
    rng = random.Random(sum(sizes))
    expected: defaultdict[CellKey, Counter[str]] = defaultdict(Counter)
    begin = 1_793_000_000 - 3 * 86400  # 2026-10-27: the New York change of 2026-11-01 within a week
    for _ in range(3000):
        at = begin + rng.uniform(0, 7 * 86400)
        attribution = Attribution(rng.choice(["email", "direct"]), rng.choice(["c1", "c2"]), "test")
        skip = tuple(s for s in sizes if rng.random() < 0.05)
        aggregator.add(at, attribution, [("page_views", 1), ("engaged_ms", 7)], skip_sizes=skip)
        for size, start in windowing.starts(at):
            if size not in skip:
                for key in published_cells(size, start, attribution.channel, attribution.campaign):
                    expected[key].update({"page_views": 1, "engaged_ms": 7})
    assert {
        CellKey(d.window_seconds, d.window_start, d.channel, d.campaign): d.measures
        for d in aggregator.drain()
    } == {key: dict(measures) for key, measures in expected.items()}
    assert aggregator.drain() == []
