"""The live board's data: columns from the catalog, window history and per-channel cells."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from streams.contracts.outputs import KpiUpdate
from streams.core.board import board_data, kpi_columns, window_starts
from streams.core.catalog import CATALOG
from streams.core.windows import Windowing

HOUR = 3600
T0 = int(datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp())


def update(kpi: str, channel: str, campaign: str, start: int, value: float | None) -> KpiUpdate:
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
        denominator=None,
        updated_at=at,
    )


def test_every_catalog_kpi_is_a_column_and_ratios_read_as_percentages() -> None:
    columns = {c["kpi"]: c["format"] for c in kpi_columns()}
    assert set(columns) == {k.name for k in CATALOG} | {"unique_visitors"}
    assert columns["email_open_rate"] == "percent" and columns["page_views"] == "number"
    assert columns["time_on_page_seconds"] == "number"  # a ratio in seconds, not a share


def test_window_starts_go_back_from_the_newest_and_follow_the_time_zone() -> None:
    windowing = Windowing((HOUR, 86400), ZoneInfo("Europe/Berlin"))
    assert window_starts(windowing, HOUR, T0, 3) == [T0 - 2 * HOUR, T0 - HOUR, T0]
    march_30 = int(datetime(2026, 3, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())
    days = window_starts(windowing, 86400, march_30, 3)
    assert [march_30 - d for d in days] == [2 * 86400 - HOUR, 86400 - HOUR, 0]  # 29 March: 23 h


def test_cells_hold_the_newest_value_and_a_point_per_window_of_that_campaign_only() -> None:
    starts = [T0 - 2 * HOUR, T0 - HOUR, T0]
    latest = [
        update("page_views", "*", "*", T0, 30),
        update("page_views", "email", "*", T0, 4),
        update("page_views", "*", "spring_sale", T0, 9),  # another campaign: not on this board
    ]
    history = {
        T0 - 2 * HOUR: [update("page_views", "*", "*", T0 - 2 * HOUR, 10)],
        T0 - HOUR: [update("page_views", "*", "spring_sale", T0 - HOUR, 99)],
        T0: latest,
    }
    data = board_data((HOUR, 86400), HOUR, "*", starts, latest, history)
    assert data["channels"] == ["*", "email"]  # the roll-up first
    assert data["cells"]["page_views"]["*"]["points"] == [10, None, 30]
    assert data["cells"]["page_views"]["email"]["points"] == [None, None, 4]
    assert data["cells"]["page_views"]["*"]["value"] == 30
    assert data["window_sizes"] == [HOUR, 86400]


def test_an_empty_view_gives_an_empty_board() -> None:
    data = board_data((HOUR,), HOUR, "*", [], [], {})
    assert data["channels"] == [] and data["cells"] == {} and data["updated_at"] is None
