"""The KPI engine without a broker: applying, replaying, closing, revising, expiring, judging
and recovering, against a dict as its table. Expected values are worked out by hand from the
window rules (docs/kpis.md, "Event time, closing and late events"), not read from the engine."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from streams.contracts.deltas import ALL, CellKey, Delta, DeltaBatch, WatermarkMark
from streams.contracts.outputs import AlertEvent
from streams.core import table_keys
from streams.core.alerts import AlertRule, rules_from_mapping
from streams.core.cells import CellState
from streams.core.engine import KpiEngine, Outputs
from streams.core.windows import Windowing, WindowPolicy
from tests.plugins.stores import DictStore

GRACE, RETENTION = 10, 120
MINUTE = 60
#: Raw partitions reporting marks to the delta partition under test.
RAW_PARTITIONS = 2
PARTITION = 0
POLICY = WindowPolicy(Windowing((MINUTE, 3600), ZoneInfo("UTC")), GRACE, RETENTION)


def delta(start: int, measures: dict[str, int], channel: str = ALL, campaign: str = ALL) -> Delta:
    return Delta(
        window_seconds=MINUTE, window_start=start, channel=channel, campaign=campaign, measures=measures
    )


def marks(watermark: float) -> list[WatermarkMark]:
    return [
        WatermarkMark(
            schema_version="1-0-0",
            raw_partition=p,
            raw_partitions=RAW_PARTITIONS,
            watermark=watermark,
            idle=False,
        )
        for p in range(RAW_PARTITIONS)
    ]


def message(deltas: list[Delta], watermark: float | None = None) -> bytes:
    batch = DeltaBatch(
        schema_version="2-0-0", deltas=deltas, marks=[] if watermark is None else marks(watermark)
    )
    return msgspec.json.encode(batch)


def stored(store: DictStore, key: CellKey) -> CellState | None:
    raw = store.get(table_keys.cell_key(PARTITION, key))
    return None if raw is None else msgspec.json.decode(raw, type=CellState)


def published(outputs: Outputs) -> dict[CellKey, tuple[dict[str, int], int | None]]:
    """Each published cell's measures and revision."""
    return {key: (state.measures, state.revision) for key, (state, _) in outputs.cells.items()}


class Worker:
    """One engine over a store, applying and publishing records in order."""

    def __init__(self, store: DictStore, rules: tuple[AlertRule, ...] = ()) -> None:
        self.store = store
        self.engine = KpiEngine(POLICY, rules, clock=lambda: datetime(2026, 12, 2, tzinfo=UTC))
        self.engine.assign([PARTITION])

    def apply(self, offset: int, value: bytes, publish: bool = True) -> Outputs:
        outputs = self.engine.apply(PARTITION, offset, value, self.store)
        if publish:
            self.engine.published(PARTITION, offset, self.store)
        return outputs


def test_deltas_add_up_per_cell_and_a_replayed_message_counts_nothing_but_publishes_again(
    dict_store: DictStore,
) -> None:
    store = dict_store
    worker = Worker(store)
    cell = CellKey(MINUTE, 0, ALL, ALL)
    first = worker.apply(0, message([delta(0, {"page_views": 2})]))
    assert published(first) == {cell: ({"page_views": 2}, None)}
    worker.apply(1, message([delta(0, {"page_views": 3, "leads": 1})]))
    before = dict(store.data)
    again = worker.engine.apply(PARTITION, 1, message([delta(0, {"page_views": 3, "leads": 1})]), store)
    assert store.data == before, "a replay writes nothing"
    assert published(again) == {cell: ({"page_views": 5, "leads": 1}, None)}
    assert again.counts["deltas_replayed"] == 1 and again.applied == []
    assert stored(store, cell) == CellState(
        measures={"page_views": 5, "leads": 1}, applied_offset=1, partition=0
    )


def test_a_window_closes_when_every_raw_partition_passes_its_end_plus_grace(dict_store: DictStore) -> None:
    store = dict_store
    worker = Worker(store)
    cell = CellKey(MINUTE, 0, "email", ALL)
    worker.apply(0, message([delta(0, {"page_views": 4}, channel="email")]))
    open_still = worker.apply(1, message([], watermark=MINUTE + GRACE - 1))
    assert open_still.cells == {} and open_still.low_watermark == MINUTE + GRACE - 1
    closing = worker.apply(2, message([], watermark=MINUTE + GRACE))
    assert published(closing) == {cell: ({"page_views": 4}, 0)}, "the final result, revision 0"
    assert closing.cells[cell][1] == {"page_views"}, "a final result carries every measure"
    assert closing.counts["cells_closed"] == 1
    assert worker.apply(3, message([], watermark=MINUTE + GRACE + 5)).cells == {}, "closed once"


def test_a_late_delta_for_a_closed_window_is_the_next_revision(dict_store: DictStore) -> None:
    store = dict_store
    worker = Worker(store)
    cell = CellKey(MINUTE, 0, ALL, ALL)
    worker.apply(0, message([delta(0, {"leads": 1})], watermark=MINUTE + GRACE))
    first = worker.apply(1, message([delta(0, {"leads": 2})]))
    second = worker.apply(2, message([delta(0, {"leads": 1})]))
    assert published(first) == {cell: ({"leads": 3}, 1)}
    assert published(second) == {cell: ({"leads": 4}, 2)}
    assert first.counts["revisions"] == second.counts["revisions"] == 1
    new_cell = CellKey(MINUTE, 0, "social", ALL)
    assert published(worker.apply(3, message([delta(0, {"leads": 1}, channel="social")]))) == {
        new_cell: ({"leads": 1}, 0)
    }, "a cell new to a closed window starts at revision 0"


def test_cells_expire_after_retention_but_outlive_the_message_that_changed_them(
    dict_store: DictStore,
) -> None:
    store = dict_store
    worker = Worker(store)
    cell = CellKey(MINUTE, 0, ALL, ALL)
    expires_at = MINUTE + GRACE + RETENTION
    worker.apply(0, message([delta(0, {"page_views": 1})], watermark=MINUTE + GRACE))
    expiring = worker.apply(1, message([delta(0, {"page_views": 1})], watermark=expires_at))
    assert published(expiring) == {cell: ({"page_views": 2}, 1)}
    assert stored(store, cell) is not None, "kept until the next mark: its outputs may still be lost"
    later = worker.apply(2, message([], watermark=expires_at + 1))
    assert stored(store, cell) is None and later.counts["cells_expired"] == 1
    dropped = worker.apply(3, message([delta(0, {"page_views": 1})]))
    assert dropped.cells == {} and dropped.counts["deltas_after_retention"] == 1


def test_a_replayed_mark_sends_the_final_results_it_produced_again(dict_store: DictStore) -> None:
    store = dict_store
    worker = Worker(store)
    cells = [CellKey(MINUTE, 0, channel, ALL) for channel in ("direct", "email")]
    worker.apply(0, message([delta(0, {"page_views": 1}, channel=c.channel) for c in cells]))
    closing = message([], watermark=MINUTE + GRACE)
    worker.apply(1, closing, publish=False)  # a worker died before the broker acknowledged
    successor = Worker(store)
    assert successor.engine.gap(PARTITION, 2, store) == range(1, 2), "read back from the published one on"
    replay = successor.apply(1, closing)
    assert published(replay) == {key: ({"page_views": 1}, 0) for key in cells}
    assert replay.counts["cells_closed"] == 0


def test_recovery_indexes_the_table_as_it_was_left(
    dict_store: DictStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = dict_store
    worker = Worker(store)
    worker.apply(0, message([delta(0, {"page_views": 1}), delta(MINUTE, {"page_views": 1})]))
    worker.apply(1, message([], watermark=MINUTE + GRACE))
    worker.apply(2, message([delta(MINUTE, {"page_views": 2})]), publish=False)
    store.put(b'[60,0,"*","*"]', b"{}")  # a key of no known layout is ignored
    successor = Worker(store)
    owned = successor.engine.partition(PARTITION, 3, store)
    assert (owned.continuity.applied_through, owned.continuity.published_through) == (2, 1)
    assert "1 entries of no known key layout" in caplog.text, "an earlier table is not read silently"
    assert owned.windows.low_watermark == MINUTE + GRACE
    assert owned.windows.is_closed(CellKey(MINUTE, 0, ALL, ALL))
    assert not owned.windows.is_closed(CellKey(MINUTE, MINUTE, ALL, ALL))
    closes_next = successor.apply(3, message([], watermark=2 * MINUTE + GRACE))
    assert published(closes_next) == {CellKey(MINUTE, MINUTE, ALL, ALL): ({"page_views": 3}, 0)}


def test_recovery_reads_only_the_partitions_entries(dict_store: DictStore) -> None:
    store = dict_store
    other = KpiEngine(POLICY, ())
    other.apply(1, 0, message([delta(0, {"page_views": 9})]), store)
    worker = Worker(store)
    owned = worker.engine.partition(PARTITION, 0, store)
    assert len(owned.windows) == 0 and owned.continuity.applied_through == -1


def test_an_undecodable_message_is_counted_and_changes_nothing(dict_store: DictStore) -> None:
    store = dict_store
    outputs = Worker(store).apply(0, b'{"schema_version": "2-0-0", "deltas": [{"window_seconds": -1}]}')
    assert outputs.counts["deltas_invalid"] == 1 and outputs.cells == {}
    assert set(store.data) == {table_keys.published_key(PARTITION)}, "only that it was passed"


def drop_rule(**overrides: Any) -> AlertRule:
    raw: dict[str, Any] = {
        "name": "traffic-drop",
        "kpi": "page_views",
        "window": "1m",
        "scope": "overall",
        "baseline": {"kind": "trailing", "count": 3},
        "drop": {"relative": 0.5, "absolute": 5},
        "min_volume": 10,
        "for_windows": 1,
        "noise_sigmas": 0,
    }
    raw.update(overrides)
    return rules_from_mapping({"rules": [raw]}, "test", (MINUTE, 3600))[0]


def test_a_closed_window_that_dropped_fires_once_and_a_window_without_cells_counts_as_zero(
    dict_store: DictStore,
) -> None:
    store = dict_store
    worker = Worker(store, (drop_rule(),))
    offset = 0
    for minute, views in enumerate([100, 100, 100, 20]):
        worker.apply(offset, message([delta(minute * MINUTE, {"page_views": views})]))
        offset += 1
    fired = [
        worker.apply(offset + n, message([], watermark=(m + 1) * MINUTE + GRACE))
        for n, m in enumerate(range(4))
    ]
    events = [msgspec.json.decode(body, type=AlertEvent) for outputs in fired for _, body in outputs.alerts]
    assert [(e.status, e.window_start.timestamp(), e.value) for e in events] == [("firing", 3 * MINUTE, 20.0)]
    assert fired[3].alerts[0][0] == msgspec.json.encode(["alert", "traffic-drop", ALL, ALL])
    assert sum(fired[3].judgements.values()) == 1
    # The minute after has no cell at all: it is judged as 0 views, still a breach, no new event.
    silent = worker.apply(offset + 4, message([], watermark=5 * MINUTE + GRACE))
    assert silent.alerts == [] and silent.judgements[("traffic-drop", "breach")] == 1
