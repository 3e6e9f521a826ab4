"""The worker's registry carries what every exporter has (build info and process metrics), and
metrics of one unit each."""

from __future__ import annotations

from importlib.metadata import version

from prometheus_client import generate_latest

from agents.metrics.registry import Metrics, kpi_metric
from agents.metrics.series import WindowGauges
from streams.contracts.deltas import ALL
from streams.contracts.outputs import KpiKey
from streams.core.catalog import CATALOG, KPI_UNITS, SUM_MEASURES, Unit


def test_build_info_and_process_metrics_are_exposed() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert 'mkpi_build_info{python="' in text and f'version="{version("mkpi")}"' in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text


def test_two_registries_do_not_collide() -> None:
    Metrics()
    Metrics()  # a duplicate timeseries in one registry would raise


def test_each_metric_has_one_unit() -> None:
    """Ratios, seconds and counts go to metrics of their own, and so do the summed measures:
    no metric mixes units (Prometheus naming: the unit is in the name)."""
    metrics = Metrics()
    gauges = WindowGauges(metrics.kpi_current, metrics.kpi_current_window_start)
    for kpi, value in (("leads", 7.0), ("email_open_rate", 0.25), ("time_on_page_seconds", 42.5)):
        gauges.observe(KpiKey(kpi, 3600, 0, ALL, ALL), value)
    at = {"window": "3600s", "channel": ALL, "campaign": ALL}
    registry = metrics.registry
    assert registry.get_sample_value("mkpi_kpi_current", {"kpi": "leads", **at}) == 7
    assert registry.get_sample_value("mkpi_kpi_current_ratio", {"kpi": "email_open_rate", **at}) == 0.25
    assert (
        registry.get_sample_value("mkpi_kpi_current_seconds", {"kpi": "time_on_page_seconds", **at}) == 42.5
    )
    assert registry.get_sample_value("mkpi_kpi_current", {"kpi": "email_open_rate", **at}) is None
    for kpi, unit in KPI_UNITS.items():
        expected = {Unit.COUNT: "mkpi_kpi_current", Unit.RATIO: "mkpi_kpi_current_ratio"}.get(
            unit, "mkpi_kpi_current_seconds"
        )
        assert kpi_metric("mkpi_kpi_current", kpi) == expected, kpi
    # Ratios are the catalog's ratios of counts; the one scaled ratio is in seconds.
    assert {k.name for k in CATALOG if k.unit is Unit.RATIO} == {
        k.name for k in CATALOG if k.denominator is not None and k.scale == 1.0
    }

    metrics.count_measure("engaged_ms", ALL, ALL, 1500)
    metrics.count_measure("lead_value_cents", ALL, ALL, 1999)
    metrics.count_measure("leads", ALL, ALL, 1)
    cell = {"channel": ALL, "campaign": ALL}
    assert registry.get_sample_value("mkpi_engaged_seconds_total", cell) == 1.5
    assert registry.get_sample_value("mkpi_lead_value_cents_total", cell) == 1999
    assert registry.get_sample_value("mkpi_measure_total", {"measure": "leads", **cell}) == 1
    assert registry.get_sample_value("mkpi_measure_total", {"measure": "engaged_ms", **cell}) is None
    assert set(metrics.measure_sums) == SUM_MEASURES
