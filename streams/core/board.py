"""The built-in live board's data: one view per role (``streams.core.roles``), a card per KPI.

``GET /board`` serves the page (``board.html``, no dependencies); it polls ``GET /api/board``,
whose body ``board_data`` builds from the Redis view: every card shows the same window, the
newest complete one (the newest window while none is complete yet), so the cards and the
channel split add up. A card holds the KPI's value there, the same window a day and a week
before, a sparkline of the windows up to it, the split by channel, and firing drop alerts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streams.contracts.deltas import ALL
from streams.contracts.outputs import AlertEvent, KpiUpdate
from streams.core.catalog import CATALOG, KPI_UNITS, UNIQUE_VISITORS
from streams.core.roles import VIEWS, Role
from streams.core.windows import Windowing

#: Windows per sparkline, and the most a request may ask for.
DEFAULT_POINTS = 30
MAX_POINTS = 120
DAY = 86400
WEEK = 7 * DAY
_DESCRIPTIONS = {kpi.name: kpi.description for kpi in CATALOG} | {
    UNIQUE_VISITORS: "distinct visitors, estimated (within 5 or 3%, whichever is larger)"
}


def window_starts(windowing: Windowing, size: int, newest: int, count: int) -> list[int]:
    """The starts of ``count`` consecutive windows ending with the one starting at ``newest``,
    oldest first (day windows follow the time zone's midnights)."""
    starts = [newest]
    while len(starts) < count:
        starts.append(windowing.start(size, starts[-1] - 1))
    return starts[::-1]


def earlier_window(windowing: Windowing, size: int, start: int, seconds_before: int) -> int:
    """The window of ``size`` a day or a week before the one at ``start``. Its middle is moved
    back, so a day window finds the day before even when that day had 23 or 25 hours."""
    return windowing.start(size, start + size // 2 - seconds_before)


@dataclass(frozen=True, slots=True)
class ShownWindow:
    start: int
    complete: bool


def newest_start(latest: Iterable[KpiUpdate]) -> int | None:
    return max((int(u.window_start.timestamp()) for u in latest), default=None)


def shown_window(
    windowing: Windowing, size: int, latest: list[KpiUpdate], history: dict[int, list[KpiUpdate]]
) -> ShownWindow | None:
    """The one window every card shows: the newest if all its values are final, else the one
    before it when that has values (a complete window beats a fresher partial one), else the
    newest, marked incomplete."""
    newest = newest_start(latest)
    if newest is None:
        return None
    in_newest = [u for u in latest if int(u.window_start.timestamp()) == newest]
    if all(u.final for u in in_newest):
        return ShownWindow(newest, True)
    previous = windowing.start(size, newest - 1)
    if history.get(previous):
        return ShownWindow(previous, True)
    return ShownWindow(newest, False)


def alert_matches(alert: AlertEvent, kpi: str, campaign: str) -> bool:
    """Whether a firing alert belongs on ``kpi``'s card of ``campaign``'s board: the all-campaign
    board shows every scope; a campaign's board, its own alerts and those over all campaigns."""
    return alert.kpi == kpi and (campaign == ALL or alert.campaign in (campaign, ALL))


def board_data(
    role: Role,
    windowing: Windowing,
    size: int,
    campaign: str,
    shown: ShownWindow | None,
    history: dict[int, list[KpiUpdate]],
    split: list[KpiUpdate],
    alerts: list[AlertEvent],
    points: int = DEFAULT_POINTS,
) -> dict[str, Any]:
    """The board's JSON. ``history``: the all-channel values of this campaign by window start
    (the sparkline's windows and the comparisons'); ``split``: every channel's values in the
    shown window; ``alerts``: the firing alerts."""
    values = {
        start: {u.kpi: u for u in updates if u.campaign == campaign and u.channel == ALL}
        for start, updates in history.items()
    }
    cards = []
    for kpi in role.kpis:
        card: dict[str, Any] = {
            "kpi": kpi,
            "description": _DESCRIPTIONS[kpi],
            "unit": KPI_UNITS[kpi].value,
            "alerts": [_alert(a) for a in alerts if alert_matches(a, kpi, campaign)],
        }
        if shown is not None:
            card |= _card_values(kpi, windowing, size, shown.start, values, split, campaign, points)
        else:
            card |= {"state": "no_data", "points": [], "channels": []}
        if any(a["cause"] == "tracking_broke" for a in card["alerts"]):
            card["state"] = "tracking_broke"
        cards.append(card)
    window = None
    if shown is not None:
        window = {
            "start": shown.start,
            "end": windowing.end(size, shown.start),
            "complete": shown.complete,
        }
    updated = [u.updated_at for updates in history.values() for u in updates]
    return {
        "view": {"name": role.name, "title": role.title, "reader": role.reader},
        "views": [{"name": r.name, "title": r.title} for r in VIEWS.values()],
        "window_sizes": list(windowing.sizes),
        "window_seconds": size,
        "campaign": campaign,
        "window": window,
        "cards": cards,
        "updated_at": max(updated).isoformat() if updated else None,
    }


def _card_values(
    kpi: str,
    windowing: Windowing,
    size: int,
    start: int,
    values: dict[int, dict[str, KpiUpdate]],
    split: list[KpiUpdate],
    campaign: str,
    points: int,
) -> dict[str, Any]:
    here = values.get(start, {}).get(kpi)
    card: dict[str, Any] = {
        "state": "no_data" if here is None else ("no_denominator" if here.value is None else "ok"),
        "value": None if here is None else here.value,
        "numerator": None if here is None else here.numerator,
        "denominator": None if here is None else here.denominator,
        "final": here is not None and here.final,
        "points": [_value(values, s, kpi) for s in window_starts(windowing, size, start, points)],
    }
    for name, seconds in (("day_before", DAY), ("week_before", WEEK)):
        if size > seconds:
            continue  # a week window has no "same window a day before"
        before_start = earlier_window(windowing, size, start, seconds)
        before = _value(values, before_start, kpi)
        card[name] = {"start": before_start, "value": before, "change": _change(card["value"], before)}
    channels = [
        {"channel": u.channel, "value": u.value}
        for u in split
        if u.kpi == kpi
        and u.campaign == campaign
        and u.channel != ALL
        and u.value is not None
        and int(u.window_start.timestamp()) == start
    ]
    card["channels"] = sorted(channels, key=lambda c: (-abs(c["value"]), c["channel"]))
    return card


def _value(values: dict[int, dict[str, KpiUpdate]], start: int, kpi: str) -> float | None:
    update = values.get(start, {}).get(kpi)
    return None if update is None else update.value


def _change(now: float | None, before: float | None) -> float | None:
    """Relative change against an earlier value; None when either is missing or it was 0."""
    if now is None or before is None or before == 0:
        return None
    return (now - before) / abs(before)


def _alert(alert: AlertEvent) -> dict[str, Any]:
    return {
        "rule": alert.rule,
        "severity": alert.severity,
        "cause": alert.cause,
        "detail": alert.detail,
        "scope": alert.scope,
        "channel": alert.channel,
        "campaign": alert.campaign,
        "window_seconds": alert.window_seconds,
        "since": alert.first_breach_start.isoformat(),
    }
