"""The live board's data: one window for every card, comparisons with a day and a week before,
sparklines, the channel split and firing alerts, per role view."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from streams.contracts.outputs import AlertEvent, KpiUpdate
from streams.core.board import ShownWindow, board_data, earlier_window, shown_window, window_starts
from streams.core.catalog import CATALOG, KPI_UNITS
from streams.core.roles import OVERVIEW, ROLES, VIEWS
from streams.core.windows import Windowing

HOUR = 3600
DAY = 86400
T0 = int(datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp())
UTC_HOURS = Windowing((HOUR, DAY), ZoneInfo("UTC"))
AUTOMATION = VIEWS["automation"]


def update(
    kpi: str,
    start: int,
    value: float | None,
    channel: str = "*",
    campaign: str = "*",
    final: bool = True,
    denominator: int | None = None,
) -> KpiUpdate:
    at = datetime.fromtimestamp(start, UTC)
    return KpiUpdate(
        schema_version="1-1-0",
        kpi=kpi,
        window_seconds=HOUR,
        window_start=at,
        window_end=datetime.fromtimestamp(start + HOUR, UTC),
        channel=channel,
        campaign=campaign,
        value=value,
        numerator=int(value or 0),
        denominator=denominator,
        final=final,
        updated_at=at,
    )


def alert(kpi: str, cause: str, campaign: str = "*", scope: str = "overall") -> AlertEvent:
    at = datetime.fromtimestamp(T0, UTC)
    return AlertEvent(
        schema_version="1-0-0",
        incident_id=f"{kpi}-{campaign}",
        status="firing",
        rule=f"{kpi}-drop",
        severity="warning",
        cause=cause,  # type: ignore[arg-type]
        detail="fell",
        kpi=kpi,
        window_seconds=HOUR,
        window_start=at,
        first_breach_start=at,
        scope=scope,  # type: ignore[arg-type]
        channel="*",
        campaign=campaign,
        value=0.1,
        baseline=0.3,
        breached_windows=1,
        emitted_at=at,
    )


def card(data: dict, kpi: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in data["cards"] if c["kpi"] == kpi)


def test_the_views_cover_the_catalog_and_the_roles_of_the_source_document() -> None:
    assert set(OVERVIEW.kpis) == set(KPI_UNITS) == {k.name for k in CATALOG} | {"unique_visitors"}
    assert list(VIEWS) == ["overview", "seo", "content", "social", "automation"]
    for role in ROLES:
        assert role.kpis and set(role.kpis) <= set(KPI_UNITS), role.name
    assert "organic_traffic" in VIEWS["seo"].kpis
    assert {"time_on_page_seconds", "blog_traffic", "net_subscribers"} <= set(VIEWS["content"].kpis)
    assert {"net_follows", "post_impressions", "shares"} <= set(VIEWS["social"].kpis)
    assert {"email_open_rate", "email_click_rate", "lead_conversion_rate"} <= set(AUTOMATION.kpis)


def test_window_starts_go_back_from_the_newest_and_follow_the_time_zone() -> None:
    windowing = Windowing((HOUR, DAY), ZoneInfo("Europe/Berlin"))
    assert window_starts(windowing, HOUR, T0, 3) == [T0 - 2 * HOUR, T0 - HOUR, T0]
    march_30 = int(datetime(2026, 3, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())
    days = window_starts(windowing, DAY, march_30, 3)
    assert [march_30 - d for d in days] == [2 * DAY - HOUR, DAY - HOUR, 0]  # 29 March: 23 h


def test_a_day_and_a_week_before_find_the_same_window_across_a_clock_change() -> None:
    berlin = Windowing((HOUR, DAY), ZoneInfo("Europe/Berlin"))
    march_30 = int(datetime(2026, 3, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())
    march_29 = int(datetime(2026, 3, 29, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())
    march_23 = int(datetime(2026, 3, 23, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())
    assert earlier_window(berlin, DAY, march_30, DAY) == march_29
    assert earlier_window(berlin, DAY, march_30, 7 * DAY) == march_23
    assert earlier_window(berlin, HOUR, T0, DAY) == T0 - DAY


def test_every_card_shows_the_newest_complete_window() -> None:
    finished = [update("leads", T0, 4), update("emails_delivered", T0, 90)]
    assert shown_window(UTC_HOURS, HOUR, finished, {}) == ShownWindow(T0, True)
    # A window still open for one series: the one before it, if it has values.
    open_now = [update("leads", T0, 4, final=False), update("emails_delivered", T0, 90)]
    history = {T0 - HOUR: [update("leads", T0 - HOUR, 7)], T0: open_now}
    assert shown_window(UTC_HOURS, HOUR, open_now, history) == ShownWindow(T0 - HOUR, True)
    assert shown_window(UTC_HOURS, HOUR, open_now, {T0: open_now}) == ShownWindow(T0, False)
    assert shown_window(UTC_HOURS, HOUR, [], {}) is None


def test_a_card_holds_the_window_its_comparisons_sparkline_and_channel_split() -> None:
    history = {
        T0 - 7 * DAY: [update("leads", T0 - 7 * DAY, 8)],
        T0 - DAY: [update("leads", T0 - DAY, 20)],
        T0 - HOUR: [update("leads", T0 - HOUR, 12), update("leads", T0 - HOUR, 99, campaign="other")],
        T0: [update("leads", T0, 15)],
    }
    split = [
        update("leads", T0, 10, channel="email"),
        update("leads", T0, 5, channel="paid_search"),
        update("leads", T0, 3, channel="email", campaign="other"),  # another campaign
    ]
    data = board_data(AUTOMATION, UTC_HOURS, HOUR, "*", ShownWindow(T0, True), history, split, [], points=3)
    leads = card(data, "leads")
    assert (leads["value"], leads["state"], leads["unit"]) == (15, "ok", "count")
    assert leads["day_before"] == {"start": T0 - DAY, "value": 20, "change": -0.25}
    assert leads["week_before"] == {"start": T0 - 7 * DAY, "value": 8, "change": 0.875}
    assert leads["points"] == [None, 12, 15]  # the windows up to the shown one, this campaign's
    assert leads["channels"] == [{"channel": "email", "value": 10}, {"channel": "paid_search", "value": 5}]
    assert data["window"] == {"start": T0, "end": T0 + HOUR, "complete": True}
    assert [c["kpi"] for c in data["cards"]] == list(AUTOMATION.kpis)


def test_missing_values_read_as_no_data_and_a_zero_denominator_as_such() -> None:
    history = {T0: [update("email_open_rate", T0, None, denominator=0)], T0 - DAY: []}
    data = board_data(AUTOMATION, UTC_HOURS, HOUR, "*", ShownWindow(T0, True), history, [], [])
    assert card(data, "email_open_rate")["state"] == "no_denominator"
    assert card(data, "leads")["state"] == "no_data" and card(data, "leads")["value"] is None
    assert card(data, "leads")["day_before"]["change"] is None
    empty = board_data(AUTOMATION, UTC_HOURS, HOUR, "*", None, {}, [], [])
    assert empty["window"] is None and {c["state"] for c in empty["cards"]} == {"no_data"}


def test_firing_alerts_land_on_their_kpis_card_and_broken_tracking_says_so() -> None:
    history = {T0: [update("email_open_rate", T0, 0.1, denominator=100), update("leads", T0, 3)]}
    alerts = [
        alert("email_open_rate", "tracking_broke", campaign="spring", scope="campaign"),
        alert("leads", "kpi_fell"),
    ]
    shown = ShownWindow(T0, True)
    data = board_data(AUTOMATION, UTC_HOURS, HOUR, "*", shown, history, [], alerts)
    assert card(data, "email_open_rate")["state"] == "tracking_broke"
    assert [a["rule"] for a in card(data, "email_open_rate")["alerts"]] == ["email_open_rate-drop"]
    assert card(data, "leads")["state"] == "ok" and card(data, "leads")["alerts"][0]["cause"] == "kpi_fell"
    assert card(data, "email_click_rate")["alerts"] == []
    # Another campaign's board shows alerts over all campaigns, not the spring campaign's.
    other = board_data(AUTOMATION, UTC_HOURS, HOUR, "autumn", shown, history, [], alerts)
    assert card(other, "email_open_rate")["alerts"] == [] and len(card(other, "leads")["alerts"]) == 1
