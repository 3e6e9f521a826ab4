"""Cells as the KPI table stores them: idempotent merging of deltas, and their KPI updates.

A cell is (window size, window start, channel, campaign) with its additive measures. All KPIs
of a cell are derived from that one cell, so ratios never need data from another partition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated

import msgspec

from streams.contracts.deltas import ALL_TIME, CellKey, Delta
from streams.contracts.outputs import KpiKey, KpiUpdate
from streams.contracts.versions import KPI_UPDATE_VERSION
from streams.core.catalog import KPI_UNITS, UNIQUE_VISITORS, affected, evaluate


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


def window_label(size: int) -> str:
    """The ``window`` label of a window size on /metrics: ``60s``, or ``total``."""
    return "total" if size == ALL_TIME else f"{size}s"


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


#: Every KPI a cell publishes: the catalog's and the visitor estimate.
KPI_NAMES = frozenset(KPI_UNITS)


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
            schema_version=KPI_UPDATE_VERSION,
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
