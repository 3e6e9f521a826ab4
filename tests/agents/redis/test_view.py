from datetime import UTC, datetime

from agents.redis.view import ViewQuery, render_table
from streams.contracts.outputs import KpiUpdate


def update(
    kpi: str, channel: str, campaign: str, value: float | None, numerator: int, denominator: int | None
) -> KpiUpdate:
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    return KpiUpdate(
        schema_version="1-0-0",
        kpi=kpi,
        window_seconds=60,
        window_start=start,
        window_end=start,
        channel=channel,
        campaign=campaign,
        value=value,
        numerator=numerator,
        denominator=denominator,
        updated_at=start,
    )


def test_query_filters_match_exactly_and_none_matches_all() -> None:
    u = update("email_open_rate", "email", "*", 0.25, 3, 12)
    assert ViewQuery(60).matches(u)
    assert ViewQuery(60, kpi="email_open_rate", channel="email").matches(u)
    assert not ViewQuery(60, campaign="spring_sale").matches(u)
    assert not ViewQuery(60, channel="*").matches(u)


def test_table_shows_ratios_with_their_parts_and_missing_values_as_dash() -> None:
    text = render_table(
        [
            update("email_open_rate", "email", "*", 0.25, 3, 12),
            update("email_click_rate", "email", "*", None, 0, 0),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "kpi",
        "channel",
        "campaign",
        "window",
        "start",
        "(UTC)",
        "value",
        "numerator",
        "denominator",
    ]
    assert lines[2].split() == ["email_open_rate", "email", "*", "2026-11-27", "10:00", "0.25", "3", "12"]
    assert lines[3].split()[5] == "-"
    assert render_table([]) == "no KPI values match"
