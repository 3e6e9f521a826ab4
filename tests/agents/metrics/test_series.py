"""The agent's Prometheus series per campaign: folded counters, gauges only for the top N, and
removal of dropped campaigns' series."""

from __future__ import annotations

from agents.metrics.registry import Metrics
from agents.runtime.kpi_agent import CampaignSeries, WindowGauges
from streams.contracts.deltas import ALL, CellKey
from streams.contracts.outputs import KpiKey
from streams.core.labels import CampaignLabels


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_counters_fold_and_dropped_campaigns_lose_their_series() -> None:
    clock = FakeClock()
    metrics = Metrics()
    gauges = WindowGauges(metrics.kpi_current, metrics.kpi_current_window_start)
    series = CampaignSeries(
        metrics, CampaignLabels(1, idle_seconds=300, now=clock, rerank_seconds=60), [gauges]
    )
    for campaign, leads in (("first", 2), ("second", 5)):
        series.observe(CellKey(60, 0, ALL, campaign), {"leads": leads}, smallest_window=True)
        if series.has_gauges(campaign):
            gauges.observe(KpiKey("leads", 60, 0, ALL, campaign), float(leads))
    assert sample(metrics, "mkpi_measure_total", measure="leads", channel=ALL, campaign="first") == 2
    assert sample(metrics, "mkpi_measure_total", measure="leads", channel=ALL, campaign="other") == 5
    assert sample(metrics, "mkpi_kpi_current", kpi="leads", window="60s", channel=ALL, campaign="first") == 2
    assert not series.has_gauges("second")

    clock.now = 400  # "first" idle since 0; "second" takes the top place at the next ranking
    series.observe(CellKey(60, 60, ALL, "second"), {"leads": 1}, smallest_window=True)
    assert sample(metrics, "mkpi_measure_total", measure="leads", channel=ALL, campaign="first") is None
    assert (
        sample(metrics, "mkpi_kpi_current", kpi="leads", window="60s", channel=ALL, campaign="first") is None
    )
    assert series.has_gauges("second")


def test_a_revoked_partition_takes_its_series_gauges_along() -> None:
    metrics = Metrics()
    gauges = WindowGauges(metrics.kpi_last_closed, metrics.kpi_last_closed_window_start)
    for campaign in ("kept", "moved"):
        gauges.observe(KpiKey("leads", 60, 0, ALL, campaign), 3.0)
    gauges.drop_where(lambda channel, campaign: campaign == "moved")
    kept = {"kpi": "leads", "window": "60s", "channel": ALL}
    assert sample(metrics, "mkpi_kpi_last_closed", **kept, campaign="kept") == 3
    assert sample(metrics, "mkpi_kpi_last_closed", **kept, campaign="moved") is None
    assert sample(metrics, "mkpi_kpi_last_closed_window_start_seconds", **kept, campaign="moved") is None
    # Observed again (the partition came back), the series returns, whatever its window start.
    gauges.observe(KpiKey("leads", 60, 0, ALL, "moved"), 4.0)
    assert sample(metrics, "mkpi_kpi_last_closed", **kept, campaign="moved") == 4
