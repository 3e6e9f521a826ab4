"""Pre-aggregation at ingest: events -> cells -> one delta per published cell per flush.

Ingest adds each event's measures to one finest cell (its own channel and campaign in the
largest window that nests in every size), then once per flush rolls the cells up into every
window size and the four published grains: per channel (campaign ``*``), per campaign (channel
``*``), per channel of a campaign (the drill-down) and overall (both ``*``). A flush sends
its deltas in ``DeltaBatch`` messages, a few per delta partition, so the agent pays Kafka's and
Faust's per-message cost once per batch instead of once per cell.
"""

from __future__ import annotations

import math
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
from streams.core.windows import DAY, QUARTER_HOUR, Windowing


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
    """Pre-aggregates the events of a batch; ``drain`` gives one delta per published cell.

    An event is added to one finest cell: its channel and campaign in its *unit* window, the
    largest window that nests in every window size (the greatest common divisor of the sizes,
    and of the quarter hour that local midnights fall on when there are day windows: 60 s for
    the default sizes). ``drain`` rolls each finest cell up, once per flush, into every window
    size and the four published grains, so the per-event work does not grow with the number of
    sizes and grains. A late event's finest cell also names the sizes it is too late for, which
    its roll-up leaves out.
    """

    def __init__(self, windowing: Windowing) -> None:
        self.windowing = windowing
        self.unit = math.gcd(*windowing.sizes, *((QUARTER_HOUR,) if DAY in windowing.sizes else ()))
        #: (unit window start, channel, campaign, sizes skipped) -> measures.
        self._cells: defaultdict[FinestCell, Counter[str]] = defaultdict(Counter)
        self._running: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self._visitors: defaultdict[FinestCell, set[str]] = defaultdict(set)
        self._published: defaultdict[CellKey, Counter[str]] = defaultdict(Counter)
        self._starts: dict[int, list[tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self._cells) + len(self._published)

    def add_to_published_cell(self, key: CellKey, measure: str, amount: int) -> None:
        """Add to a cell as published (a roll-up included): for distinct counts, which are
        decided per published cell and so must not be rolled up again."""
        self._published[key][measure] += amount

    def _finest(
        self, event_epoch_seconds: float, attribution: Attribution, skip_sizes: tuple[int, ...]
    ) -> FinestCell:
        unit_start = int(event_epoch_seconds // self.unit) * self.unit
        return (unit_start, attribution.channel, attribution.campaign, skip_sizes)

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
        cell = self._cells[self._finest(event_epoch_seconds, attribution, skip_sizes)]
        for measure, amount in amounts:
            cell[measure] += amount
        totals = [(measure, amount) for measure, amount in amounts if measure in RUNNING_TOTAL_MEASURES]
        if totals:
            running = self._running[(attribution.channel, attribution.campaign)]
            for measure, amount in totals:
                running[measure] += amount

    def add_visitor(
        self, event_epoch_seconds: float, attribution: Attribution, visitor: str, skip_sizes: tuple[int, ...]
    ) -> None:
        """A page view's visitor, for the unique-visitor sketches of the cells it counts in."""
        self._visitors[self._finest(event_epoch_seconds, attribution, skip_sizes)].add(visitor)

    def _rolled_up(self, finest: FinestCell) -> Iterable[CellKey]:
        """The published cells a finest cell counts in."""
        unit_start, channel, campaign, skip_sizes = finest
        starts = self._starts.get(unit_start)
        if starts is None:
            if len(self._starts) >= 4096:
                self._starts.clear()
            starts = self._starts[unit_start] = self.windowing.starts(unit_start)
        for size, start in starts:
            if size not in skip_sizes:
                yield from published_cells(size, start, channel, campaign)

    def drain_visitors(self) -> dict[CellKey, set[str]]:
        """The visitors of each published cell since the last call."""
        rolled: defaultdict[CellKey, set[str]] = defaultdict(set)
        for finest, visitors in self._visitors.items():
            for key in self._rolled_up(finest):
                rolled[key] |= visitors
        self._visitors = defaultdict(set)
        return dict(rolled)

    def drain(self) -> list[Delta]:
        rolled = self._published
        for finest, measures in self._cells.items():
            for key in self._rolled_up(finest):
                rolled[key].update(measures)
        for (channel, campaign), totals in self._running.items():
            for key in published_cells(ALL_TIME, ALL_TIME, channel, campaign):
                rolled[key].update(totals)
        self._cells = defaultdict(Counter)
        self._running = defaultdict(Counter)
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


#: (unit window start, channel, campaign, window sizes the events are too late for)
FinestCell = tuple[int, str, str, tuple[int, ...]]
