"""The agent that folds cell deltas into the KPI table and publishes the KPIs they change."""

from __future__ import annotations

import logging
from typing import Any

import faust
import msgspec
import redis.asyncio as aioredis
from faust.types import TableT
from redis.exceptions import RedisError

from streams.kpis import CellState, Delta, KpiKey, apply_delta, kpi_updates
from streams.metrics import Metrics
from streams.settings import Settings
from streams.view import RedisView

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
    settings: Settings,
) -> Any:
    gauges = CurrentWindowGauges(metrics)
    windowing = settings.windowing
    smallest_window = min(windowing.sizes)

    async def apply_kpi_deltas(stream: faust.StreamT[bytes]) -> None:
        # Made here, inside the worker's event loop, which the Redis client binds to.
        view = RedisView(aioredis.Redis.from_url(settings.redis_url), settings.topic_prefix)
        async for event in stream.events():
            try:
                delta = _delta_decoder.decode(event.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                metrics.deltas_invalid.inc()
                log.error("skipping undecodable delta at offset %s: %s", event.message.offset, exc)
                continue
            key = delta.key
            table_key = key.encode()
            stored = None if (raw := table.get(table_key)) is None else _state_decoder.decode(raw)
            state = apply_delta(stored, delta, event.message.offset)
            replayed = state is None
            if state is None:
                # Applied before a crash; its KPI updates may not have reached the topic (the
                # changelog write can land while the update is lost), so publish them again:
                # consumers keep the latest value per key, so a repeat is harmless.
                metrics.deltas_replayed.inc()
                assert stored is not None
                state = stored
            else:
                table[table_key] = _encoder.encode(state)
            if not replayed:
                metrics.deltas_applied.inc()
                if key.window_seconds == smallest_window:  # count each event once, not once per size
                    for measure, amount in delta.measures.items():
                        metrics.measures.labels(measure, key.channel, key.campaign).inc(amount)
            window_end = windowing.end(key.window_seconds, key.window_start)
            changed = kpi_updates(key, state, set(delta.measures), window_end)
            # Metrics and view first: whoever sees a value on the topic finds them already there.
            for kpi_key, update in changed:
                gauges.observe(kpi_key, update.value)
            try:
                await view.write(changed)
            except (RedisError, OSError) as exc:
                metrics.view_errors.inc()
                log.warning("could not update the Redis view (%s); the topic has the values", exc)
            for kpi_key, update in changed:
                await updates.send(key=kpi_key.encode(), value=_encoder.encode(update))

    return app.agent(deltas, name="apply_kpi_deltas")(apply_kpi_deltas)
