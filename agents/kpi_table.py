"""The agent that folds cell deltas into the KPI table and publishes the KPIs they change."""

from __future__ import annotations

import logging
from typing import Any

import faust
import msgspec
from faust.types import TableT

from streams.kpis import CellState, Delta, KpiKey, apply_delta, kpi_updates
from streams.metrics import Metrics
from streams.windows import Windowing

log = logging.getLogger(__name__)

_delta_decoder = msgspec.json.Decoder(Delta)
_state_decoder = msgspec.json.Decoder(CellState)
_encoder = msgspec.json.Encoder()


class CurrentWindowGauges:
    """Keeps ``mkpi_kpi_current`` on the newest window of each series."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._newest_start: dict[tuple[str, int, str, str], int] = {}

    def observe(self, key: KpiKey, value: float | None) -> None:
        series = (key.kpi, key.window_seconds, key.channel, key.campaign)
        if key.window_start < self._newest_start.get(series, key.window_start):
            return
        self._newest_start[series] = key.window_start
        labels = (key.kpi, f"{key.window_seconds}s", key.channel, key.campaign)
        self.metrics.kpi_current.labels(*labels).set(float("nan") if value is None else value)
        self.metrics.kpi_current_window_start.labels(*labels).set(key.window_start)


def register_kpi_agent(
    app: faust.App,
    deltas: faust.TopicT,
    updates: faust.TopicT,
    table: TableT[bytes, bytes],
    metrics: Metrics,
    windowing: Windowing,
) -> Any:
    gauges = CurrentWindowGauges(metrics)
    smallest_window = min(windowing.sizes)

    async def apply_kpi_deltas(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                delta = _delta_decoder.decode(event.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                metrics.deltas_invalid.inc()
                log.error("skipping undecodable delta at offset %s: %s", event.message.offset, exc)
                continue
            key = delta.key
            table_key = key.encode()
            stored = table.get(table_key)
            state = apply_delta(
                None if stored is None else _state_decoder.decode(stored), delta, event.message.offset
            )
            if state is None:
                metrics.deltas_replayed.inc()
                continue
            table[table_key] = _encoder.encode(state)
            window_end = windowing.end(key.window_seconds, key.window_start)
            for kpi_key, update in kpi_updates(key, state, set(delta.measures), window_end):
                await updates.send(key=kpi_key.encode(), value=_encoder.encode(update))
                gauges.observe(kpi_key, update.value)
            metrics.deltas_applied.inc()
            if key.window_seconds == smallest_window:  # count each event once, not once per size
                for measure, amount in delta.measures.items():
                    metrics.measures.labels(measure, key.channel, key.campaign).inc(amount)

    return app.agent(deltas, name="apply_kpi_deltas")(apply_kpi_deltas)
