"""The built-in live board's data: every catalog KPI per channel, now and over recent windows.

``GET /board`` serves the page (``board.html``, no dependencies); it polls ``GET /api/board``,
whose body ``board_data`` builds from the Redis view (``streams.view``): the newest value of
each series, and the same series in the windows before it for the sparklines.
"""

from __future__ import annotations

from typing import Any

from streams.contracts.deltas import ALL
from streams.contracts.outputs import KpiUpdate
from streams.core.catalog import CATALOG
from streams.core.cells import UNIQUE_VISITORS
from streams.core.windows import Windowing

#: Windows per sparkline, and the most a request may ask for.
DEFAULT_POINTS = 30
MAX_POINTS = 120


def kpi_columns() -> list[dict[str, str]]:
    """The catalog in board order, with how each value reads: a percentage (a ratio of
    counts), or a number."""
    columns = [
        {
            "kpi": kpi.name,
            "description": kpi.description,
            "format": "percent" if kpi.denominator is not None and kpi.scale == 1.0 else "number",
        }
        for kpi in CATALOG
    ]
    columns.append(
        {"kpi": UNIQUE_VISITORS, "description": "distinct visitors (HyperLogLog)", "format": "number"}
    )
    return columns


def window_starts(windowing: Windowing, size: int, newest: int, count: int) -> list[int]:
    """The starts of ``count`` consecutive windows ending with the one starting at ``newest``,
    oldest first (day windows follow the time zone's midnights)."""
    starts = [newest]
    while len(starts) < count:
        starts.append(windowing.start(size, starts[-1] - 1))
    return starts[::-1]


def board_data(
    sizes: tuple[int, ...],
    window_seconds: int,
    campaign: str,
    starts: list[int],
    latest: list[KpiUpdate],
    history: dict[int, list[KpiUpdate]],
) -> dict[str, Any]:
    """The board's JSON: per KPI and channel, the newest value and one point per window of
    ``starts`` (None where the series had no value). ``history`` holds each window's values."""
    mine = [u for u in latest if u.campaign == campaign]
    past_values = {
        start: {(u.kpi, u.channel): u.value for u in updates if u.campaign == campaign}
        for start, updates in history.items()
    }
    channels = sorted({u.channel for u in mine}, key=lambda c: (c != ALL, c))
    cells: dict[str, dict[str, Any]] = {}
    for update in mine:
        points = [past_values.get(start, {}).get((update.kpi, update.channel)) for start in starts]
        cells.setdefault(update.kpi, {})[update.channel] = {
            "value": update.value,
            "numerator": update.numerator,
            "denominator": update.denominator,
            "window_start": update.window_start.isoformat(),
            "final": update.final,
            "points": points,
        }
    newest = max((u.updated_at for u in mine), default=None)
    return {
        "window_sizes": list(sizes),
        "window_seconds": window_seconds,
        "campaign": campaign,
        "channels": channels,
        "kpis": kpi_columns(),
        "window_starts": starts,
        "cells": cells,
        "updated_at": None if newest is None else newest.isoformat(),
    }
