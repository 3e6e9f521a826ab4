"""The worker's registry carries what every exporter has: build info and process metrics."""

from __future__ import annotations

from importlib.metadata import version

from prometheus_client import generate_latest

from agents.metrics.registry import Metrics


def test_build_info_and_process_metrics_are_exposed() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert 'mkpi_build_info{python="' in text and f'version="{version("mkpi")}"' in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text


def test_two_registries_do_not_collide() -> None:
    Metrics()
    Metrics()  # a duplicate timeseries in one registry would raise
