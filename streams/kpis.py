"""Cells of measures, pre-aggregation into deltas, idempotent merging, and KPI updates.

A cell is (window size, window start, channel, campaign). Ingest adds each event's measures
to its finest cell (its own channel and campaign) in every window size, then once per flush
rolls the cells up into the three published grains: per channel (campaign ``*``), per
campaign (channel ``*``) and overall (both ``*``): one delta per cell. All KPIs of a cell are
derived from that one cell, so ratios never need data from another partition. A flush sends
its deltas in ``DeltaBatch`` messages, a few per delta partition, so the agent pays Kafka's and
Faust's per-message cost once per batch instead of once per cell.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, NamedTuple

import msgspec

from streams.attribution import Attribution
from streams.catalog import RUNNING_TOTAL_MEASURES, affected, evaluate
from streams.events import AwareTime
from streams.watermarks import WatermarkMark
from streams.windows import Windowing

ALL = "*"
#: Window size (and start) of the running totals: since counting began, never closed.
ALL_TIME = 0
KPI_SCHEMA_VERSION = "1-1-0"
DELTA_SCHEMA_VERSION = "2-0-0"
#: Cells per delta message: a cell encodes to at most about 1 KB (a 256-character campaign
#: and every measure), so a message stays under Kafka's default 1 MB limit.
DELTAS_PER_MESSAGE = 500


class CellKey(NamedTuple):
    """Identity of one cell; the key of deltas and of the KPI table."""

    window_seconds: int
    window_start: int
    channel: str
    campaign: str

    def encode(self) -> bytes:
        return _encode_key(self)


def series_partition(channel: str, campaign: str, partitions: int) -> int:
    """The delta partition of every cell of a channel and campaign, whatever its window: all
    windows of a series meet in one place, in order, which drop alerts need (they compare a
    window with the ones before it). A stable hash, the same in every process."""
    return zlib.crc32(_encode_key((channel, campaign))) % partitions


def _encode_key(key: tuple[object, ...]) -> bytes:
    """Kafka keys are JSON arrays: unambiguous whatever a campaign name holds."""
    return msgspec.json.encode(key)


class KpiKey(NamedTuple):
    """Identity of one KPI value; the key of the KPI topics."""

    kpi: str
    window_seconds: int
    window_start: int
    channel: str
    campaign: str

    def encode(self) -> bytes:
        return _encode_key(self)

    @classmethod
    def decode(cls, raw: bytes) -> KpiKey:
        kpi, window_seconds, window_start, channel, campaign = msgspec.json.decode(
            raw, type=tuple[str, int, int, str, str]
        )
        return cls(kpi, window_seconds, window_start, channel, campaign)


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """Increments of the measures of one cell, produced by one ingest flush."""

    window_seconds: Annotated[int, msgspec.Meta(ge=0, description="0: a running total.")]
    window_start: Annotated[int, msgspec.Meta(description="Unix seconds.")]
    channel: str
    campaign: str
    measures: dict[str, int]

    @property
    def key(self) -> CellKey:
        return CellKey(self.window_seconds, self.window_start, self.channel, self.campaign)


class DeltaBatch(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the delta topic: cells of one partition from one flush, then (in the
    flush's last message to each partition) the event-time marks of the raw partitions the
    flush read, which apply after the deltas."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^2-[0-9]+-[0-9]+$")]
    deltas: list[Delta]
    marks: list[WatermarkMark] = []


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
            messages.append((partition, DeltaBatch(schema_version=DELTA_SCHEMA_VERSION, deltas=chunk)))
        last = chunks[-1] if chunks else []
        messages.append(
            (partition, DeltaBatch(schema_version=DELTA_SCHEMA_VERSION, deltas=last, marks=marks))
        )
    return messages


class CellState(msgspec.Struct, frozen=True, kw_only=True):
    """What the Faust table stores per cell.

    ``applied_offset`` makes replays no-ops. ``revision`` is None while the window is open, 0
    once its final result is out, then one more per late correction; ``closed_by`` is the
    offset of the watermark that closed it, so a replay of that watermark can re-send it.
    """

    measures: dict[str, int]
    applied_offset: int
    partition: Annotated[int, msgspec.Meta(description="The delta partition the cell lives on.")]
    revision: int | None = None
    closed_by: int | None = None


class KpiUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """The latest value of one KPI in one window."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    kpi: Annotated[str, msgspec.Meta(description="A KPI of the catalog (README).")]
    window_seconds: Annotated[
        int, msgspec.Meta(ge=0, description="0: the running total since counting began (net_subscribers).")
    ]
    window_start: AwareTime
    window_end: Annotated[datetime, msgspec.Meta(tz=True, description="Exclusive.")] | None
    channel: Annotated[str, msgspec.Meta(description="A channel, or '*' for all channels.")]
    campaign: Annotated[
        str, msgspec.Meta(description="Lower-cased utm campaign, '(none)' when absent, '*' for all.")
    ]
    value: Annotated[float | None, msgspec.Meta(description="null for a ratio whose denominator is 0.")]
    numerator: int
    denominator: Annotated[int | None, msgspec.Meta(description="null unless the KPI is a ratio.")]
    final: Annotated[bool, msgspec.Meta(description="The window has closed; this is its result.")] = False
    revision: Annotated[
        int | None,
        msgspec.Meta(
            description="null while open; 0 for the final result, then 1, 2, ... per late correction."
        ),
    ] = None
    updated_at: AwareTime


def window_label(size: int) -> str:
    """The ``window`` label of a window size on /metrics: ``60s``, or ``total``."""
    return "total" if size == ALL_TIME else f"{size}s"


def published_cells(size: int, start: int, channel: str, campaign: str) -> tuple[CellKey, ...]:
    """The cells an event of (channel, campaign) counts in: per channel, per campaign, overall."""
    return (
        CellKey(size, start, channel, ALL),
        CellKey(size, start, ALL, campaign),
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


def apply_delta(
    state: CellState | None, delta: Delta, offset: int, partition: int, window_closed: bool = False
) -> CellState | None:
    """Merge ``delta`` (read at ``offset`` of ``partition``); None when it was applied before.

    Every delta of a cell arrives through one partition, in offset order, so an offset at or
    below the last one applied is a replay after a restart. A delta reaching a closed window
    makes the next revision of its result (the first one, 0, for a cell new to that window).
    """
    if state is not None and offset <= state.applied_offset:
        return None
    revision = None
    if window_closed:
        revision = 0 if state is None or state.revision is None else state.revision + 1
    if state is None:
        return CellState(
            measures=dict(delta.measures), applied_offset=offset, partition=partition, revision=revision
        )
    merged = Counter(state.measures)
    merged.update(delta.measures)
    return CellState(
        measures=dict(merged),
        applied_offset=offset,
        partition=partition,
        revision=revision,
        closed_by=state.closed_by,
    )


UNIQUE_VISITORS = "unique_visitors"


def kpi_updates(
    key: CellKey,
    state: CellState,
    changed: Iterable[str],
    window_end: int | None,
    now: datetime | None = None,
) -> list[tuple[KpiKey, KpiUpdate]]:
    """The KPI values of a cell that depend on the ``changed`` measures (all of a cell's
    measures for its final result)."""
    window = _window_times(key, window_end)
    updated_at = now or datetime.now(UTC)
    updates = []
    for kpi in affected(frozenset(changed)):
        value = evaluate(kpi, state.measures)
        updates.append(
            _update(key, state, kpi.name, value.value, value.numerator, value.denominator, window, updated_at)
        )
    return updates


def unique_visitors_update(
    key: CellKey, state: CellState, visitors: int, window_end: int | None, now: datetime | None = None
) -> tuple[KpiKey, KpiUpdate]:
    """The approximate distinct visitors of a cell (a HyperLogLog count, see streams.visitors)."""
    window = _window_times(key, window_end)
    return _update(
        key, state, UNIQUE_VISITORS, float(visitors), visitors, None, window, now or datetime.now(UTC)
    )


def _window_times(key: CellKey, window_end: int | None) -> tuple[datetime, datetime | None]:
    start = datetime.fromtimestamp(key.window_start, UTC)
    return start, None if window_end is None else datetime.fromtimestamp(window_end, UTC)


def _update(
    key: CellKey,
    state: CellState,
    kpi: str,
    value: float | None,
    numerator: int,
    denominator: int | None,
    window: tuple[datetime, datetime | None],
    updated_at: datetime,
) -> tuple[KpiKey, KpiUpdate]:
    return (
        KpiKey(kpi, key.window_seconds, key.window_start, key.channel, key.campaign),
        KpiUpdate(
            schema_version=KPI_SCHEMA_VERSION,
            kpi=kpi,
            window_seconds=key.window_seconds,
            window_start=window[0],
            window_end=window[1],
            channel=key.channel,
            campaign=key.campaign,
            value=value,
            numerator=numerator,
            denominator=denominator,
            final=state.revision is not None,
            revision=state.revision,
            updated_at=updated_at,
        ),
    )
