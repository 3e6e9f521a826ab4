"""Pre-aggregation at ingest: events -> cells -> one delta per published cell per flush.

Ingest adds each event's measures to its finest cell (its own channel and campaign) in every
window size, then once per flush rolls the cells up into the four published grains: per
channel (campaign ``*``), per campaign (channel ``*``), per channel of a campaign (the
drill-down: the finest cell itself) and overall (both ``*``). A flush sends
its deltas in ``DeltaBatch`` messages, a few per delta partition, so the agent pays Kafka's and
Faust's per-message cost once per batch instead of once per cell.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from streams.contracts.deltas import (
    ALL,
    ALL_TIME,
    DELTAS_PER_MESSAGE,
    CellKey,
    Delta,
    DeltaBatch,
    WatermarkMark,
    series_partition,
)
from streams.contracts.versions import KPI_DELTA_VERSION
from streams.core.attribution import Attribution
from streams.core.catalog import RUNNING_TOTAL_MEASURES
from streams.core.windows import Windowing


def delta_batches(
    deltas: Sequence[Delta], marks: list[WatermarkMark], partitions: int
) -> list[tuple[int, DeltaBatch]]:
    """The messages of one flush and their delta partitions: every partition gets the marks,
    after all of its deltas, so a mark never overtakes a delta made before it."""
    by_partition: list[list[Delta]] = [[] for _ in range(partitions)]
    for delta in deltas:
        by_partition[series_partition(delta.channel, delta.campaign, partitions)].append(delta)
    messages = []
    for partition, cells in enumerate(by_partition):
        chunks = [cells[i : i + DELTAS_PER_MESSAGE] for i in range(0, len(cells), DELTAS_PER_MESSAGE)]
        if not chunks and not marks:
            continue
        for chunk in chunks[:-1]:
            messages.append((partition, DeltaBatch(schema_version=KPI_DELTA_VERSION, deltas=chunk)))
        last = chunks[-1] if chunks else []
        messages.append((partition, DeltaBatch(schema_version=KPI_DELTA_VERSION, deltas=last, marks=marks)))
    return messages


def published_cells(size: int, start: int, channel: str, campaign: str) -> tuple[CellKey, ...]:
    """The cells an event of (channel, campaign) counts in: per channel, per campaign, the
    campaign's channel (the drill-down) and overall."""
    return (
        CellKey(size, start, channel, ALL),
        CellKey(size, start, ALL, campaign),
        CellKey(size, start, channel, campaign),
        CellKey(size, start, ALL, ALL),
    )


class DeltaAggregator:
    """Pre-aggregates the events of a batch; ``drain`` gives one delta per cell."""

    def __init__(self, windowing: Windowing) -> None:
        self.windowing = windowing
        self._cells: defaultdict[tuple[int, int, str, str], Counter[str]] = defaultdict(Counter)
        self._published: defaultdict[CellKey, Counter[str]] = defaultdict(Counter)

    def __len__(self) -> int:
        return len(self._cells) + len(self._published)

    def add_to_published_cell(self, key: CellKey, measure: str, amount: int) -> None:
        """Add to a cell as published (a roll-up included): for distinct counts, which are
        decided per published cell and so must not be rolled up again."""
        self._published[key][measure] += amount

    def add(
        self,
        event_epoch_seconds: float,
        attribution: Attribution,
        measures: Iterable[tuple[str, int]],
        skip_sizes: tuple[int, ...] = (),
    ) -> None:
        amounts = list(measures)
        if not amounts:
            return
        for size, start in self.windowing.starts(event_epoch_seconds):
            if size in skip_sizes:
                continue
            cell = self._cells[(size, start, attribution.channel, attribution.campaign)]
            for measure, amount in amounts:
                cell[measure] += amount
        totals = [(measure, amount) for measure, amount in amounts if measure in RUNNING_TOTAL_MEASURES]
        if totals:
            cell = self._cells[(ALL_TIME, ALL_TIME, attribution.channel, attribution.campaign)]
            for measure, amount in totals:
                cell[measure] += amount

    def drain(self) -> list[Delta]:
        rolled = self._published
        for (size, start, channel, campaign), measures in self._cells.items():
            for key in published_cells(size, start, channel, campaign):
                rolled[key].update(measures)
        self._cells = defaultdict(Counter)
        self._published = defaultdict(Counter)
        return [
            Delta(
                window_seconds=key.window_seconds,
                window_start=key.window_start,
                channel=key.channel,
                campaign=key.campaign,
                measures=dict(measures),
            )
            for key, measures in rolled.items()
        ]
