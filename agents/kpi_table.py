"""The agent that folds cell deltas into the KPI table, closes windows and publishes KPIs.

The delta topic carries two kinds of message: cell deltas from ingest, and watermark marks
(ingest's event-time progress per raw partition). Per delta partition the agent keeps a
``PartitionWindows`` index, rebuilt from the table after every assignment; the pure rules
live in ``streams.kpis`` (merging) and ``streams.closing`` (life cycle).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import faust
import msgspec
import redis.asyncio as aioredis
from faust.types import TableT
from redis.exceptions import RedisError

from streams.catalog import SUM_MEASURES
from streams.closing import MarkState, PartitionWindows, close_cell, mark_key, merge_mark
from streams.kpis import (
    ALL,
    ALL_TIME,
    CellKey,
    CellState,
    Delta,
    KpiKey,
    KpiUpdate,
    apply_delta,
    kpi_updates,
    unique_visitors_update,
    window_label,
)
from streams.labels import CampaignLabels
from streams.metrics import Metrics
from streams.settings import Settings
from streams.view import RedisView
from streams.visitors import VisitorSketches
from streams.watermarks import WatermarkMark

log = logging.getLogger(__name__)

_message_decoder = msgspec.json.Decoder(Delta | WatermarkMark)
_state_decoder = msgspec.json.Decoder(CellState)
_mark_state_decoder = msgspec.json.Decoder(MarkState)
_key_decoder = msgspec.json.Decoder(list[int | str])
_encoder = msgspec.json.Encoder()

Series = tuple[str, int, str, str]


class WindowGauges:
    """Keeps a value gauge and its window-start gauge on the newest window of each series."""

    def __init__(self, values: Any, starts: Any) -> None:
        self.values = values
        self.starts = starts
        self._newest_start: dict[Series, int] = {}

    def observe(self, key: KpiKey, value: float | None) -> None:
        series = (key.kpi, key.window_seconds, key.channel, key.campaign)
        if key.window_start < self._newest_start.get(series, key.window_start):
            return
        self._newest_start[series] = key.window_start
        labels = (key.kpi, window_label(key.window_seconds), key.channel, key.campaign)
        self.values.labels(*labels).set(float("nan") if value is None else value)
        self.starts.labels(*labels).set(key.window_start)

    def drop_campaigns(self, campaigns: frozenset[str]) -> None:
        for series in [s for s in self._newest_start if s[3] in campaigns]:
            kpi, size, channel, campaign = series
            labels = (kpi, window_label(size), channel, campaign)
            self.values.remove(*labels)
            self.starts.remove(*labels)
            del self._newest_start[series]


class CampaignSeries:
    """Applies ``CampaignLabels`` to the agent's metrics: folds counters, skips gauges of
    campaigns outside the top N, and removes the series of dropped campaigns."""

    def __init__(self, metrics: Metrics, labels: CampaignLabels, gauges: list[WindowGauges]) -> None:
        self.metrics = metrics
        self.labels = labels
        self.gauges = gauges
        self._counters: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)

    def observe(self, key: CellKey, measures: dict[str, int], smallest_window: bool) -> None:
        """Rank campaigns by the deltas of the smallest window (each event once), and count
        those in the raw counters."""
        if key.channel == ALL:
            events = sum(n for m, n in measures.items() if m not in SUM_MEASURES) if smallest_window else 0
            self.labels.observe(key.campaign, events)
        if smallest_window:
            self._count(key, measures)

    def _count(self, key: CellKey, measures: dict[str, int]) -> None:
        campaign = self.labels.label(key.campaign)
        for measure, amount in measures.items():
            self.metrics.measures.labels(measure, key.channel, campaign).inc(amount)
            self._counters[campaign].add((measure, key.channel))
        if self.labels.rerank_due():
            dropped = self.labels.rerank().dropped
            for campaign in dropped:
                for measure, channel in self._counters.pop(campaign, ()):
                    self.metrics.measures.remove(measure, channel, campaign)
            for gauges in self.gauges:
                gauges.drop_campaigns(dropped)

    def has_gauges(self, campaign: str) -> bool:
        return self.labels.has_own_series(campaign)


class KpiTableAgent:
    """The body of the agent, with the table, topics and outputs it works on."""

    def __init__(
        self,
        table: TableT[bytes, bytes],
        updates: faust.TopicT,
        results: faust.TopicT,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.table = table
        self.updates = updates
        self.results = results
        self.metrics = metrics
        self.settings = settings
        self.windowing = settings.windowing
        self.smallest_window = min(self.windowing.sizes)
        self.current = WindowGauges(metrics.kpi_current, metrics.kpi_current_window_start)
        self.last_closed = WindowGauges(metrics.kpi_last_closed, metrics.kpi_last_closed_window_start)
        labels = CampaignLabels(
            settings.metrics_top_campaigns, settings.metrics_campaign_idle_seconds, time.monotonic
        )
        self.campaigns = CampaignSeries(metrics, labels, [self.current, self.last_closed])
        self.partitions: dict[int, PartitionWindows] = {}
        self.view: RedisView | None = None
        self.visitors: VisitorSketches | None = None

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the indexes of revoked partitions; they are rebuilt if they come back."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def _windows(self, partition: int, offset: int) -> PartitionWindows:
        windows = self.partitions.get(partition)
        if windows is None:
            windows = self.partitions[partition] = self._rebuild(partition, offset)
        return windows

    def _rebuild(self, partition: int, offset: int) -> PartitionWindows:
        """Index the partition's cells and marks from the (recovered) table."""
        settings = self.settings
        windows = PartitionWindows(self.windowing, settings.grace_seconds, settings.window_retention_seconds)
        for raw_key, raw_value in self.table.items():
            key = _key_decoder.decode(raw_key)
            if isinstance(key[0], str):  # a mark: ["watermark", delta partition, raw partition]
                if key[1] == partition:
                    windows.record_mark(_mark_state_decoder.decode(raw_value).mark)
                continue
            state = _state_decoder.decode(raw_value)
            if state.partition == partition:
                size, start, channel, campaign = key
                windows.add(CellKey(int(size), int(start), str(channel), str(campaign)), state)
        log.info(
            "delta partition %d resumes at offset %d with %d cells and %d raw partition marks",
            partition,
            offset,
            len(windows),
            len(windows.marks),
        )
        return windows

    async def process(self, stream: faust.StreamT[bytes]) -> None:
        # Made here, inside the worker's event loop, which the Redis client binds to.
        client = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
        self.view = RedisView(client, self.settings.topic_prefix)
        self.visitors = VisitorSketches(client, self.settings.app_id)
        async for event in stream.events():
            partition, offset = event.message.partition, event.message.offset
            try:
                message = _message_decoder.decode(event.value)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.metrics.deltas_invalid.inc()
                log.error("skipping undecodable delta message at %s/%s: %s", partition, offset, exc)
                continue
            windows = self._windows(partition, offset)
            if isinstance(message, Delta):
                await self._on_delta(windows, message, partition, offset)
            else:
                await self._on_mark(windows, message, partition, offset)

    async def _on_delta(self, windows: PartitionWindows, delta: Delta, partition: int, offset: int) -> None:
        key = delta.key
        if windows.is_expired(key):
            self.metrics.deltas_after_retention.inc()
            log.error(
                "dropping a delta for %s at %s/%s: its window is past retention", key, partition, offset
            )
            return
        table_key = key.encode()
        stored = None if (raw := self.table.get(table_key)) is None else _state_decoder.decode(raw)
        state = apply_delta(stored, delta, offset, partition, windows.is_closed(key))
        if state is None:
            # Applied before a crash; its outputs may not have reached the topics (the changelog
            # write can land while they are lost), so publish them again: consumers keep the
            # latest value per key (and revision), so a repeat is harmless.
            self.metrics.deltas_replayed.inc()
            assert stored is not None
            state = stored
        else:
            self.table[table_key] = _encoder.encode(state)
            windows.add(key, state)
            self.metrics.deltas_applied.inc()
            if state.revision:
                self.metrics.revisions.inc()
            self.campaigns.observe(key, delta.measures, key.window_seconds == self.smallest_window)
        await self._publish(key, state, delta.measures)

    async def _on_mark(
        self, windows: PartitionWindows, mark: WatermarkMark, partition: int, offset: int
    ) -> None:
        table_key = mark_key(partition, mark.raw_partition)
        stored = None if (raw := self.table.get(table_key)) is None else _mark_state_decoder.decode(raw)
        merged = merge_mark(stored, mark, offset)
        if merged is None:
            # A replay: re-send the final results this mark produced before the crash.
            for key in sorted(windows.closed_by(offset)):
                if (raw_state := self.table.get(key.encode())) is not None:
                    state = _state_decoder.decode(raw_state)
                    await self._publish(key, state, state.measures)
        else:
            self.table[table_key] = _encoder.encode(merged)
            windows.record_mark(merged.mark)
        low = windows.low_watermark
        if low is not None:
            self.metrics.low_watermark.set(low)
        for key in windows.due():
            table_cell = key.encode()
            raw_state = self.table.get(table_cell)
            if raw_state is None:
                continue
            state = close_cell(_state_decoder.decode(raw_state), offset)
            self.table[table_cell] = _encoder.encode(state)
            windows.add(key, state)
            self.metrics.cells_closed.inc()
            await self._publish(key, state, state.measures)
        for key in windows.expired():
            self.table.pop(key.encode(), None)
            self.metrics.cells_expired.inc()

    async def _publish(self, key: CellKey, state: CellState, changed: Iterable[str]) -> None:
        """Gauges and the Redis view first, so whoever sees a value on a topic finds them
        already there; then the latest-value topic, and the results topic once closed."""
        window_end = (
            None
            if key.window_seconds == ALL_TIME
            else self.windowing.end(key.window_seconds, key.window_start)
        )
        updates = kpi_updates(key, state, changed, window_end)
        if "page_views" in changed:
            updates.extend(await self._unique_visitors(key, state, window_end))
        if self.campaigns.has_gauges(key.campaign):
            for kpi_key, update in updates:
                self.current.observe(kpi_key, update.value)
                if update.final:
                    self.last_closed.observe(kpi_key, update.value)
        await self._write_view(updates)
        for kpi_key, update in updates:
            body = _encoder.encode(update)
            await self.updates.send(key=kpi_key.encode(), value=body)
            if update.final:
                await self.results.send(key=kpi_key.encode(), value=body)

    async def _unique_visitors(
        self, key: CellKey, state: CellState, window_end: int | None
    ) -> list[tuple[KpiKey, KpiUpdate]]:
        """The cell's unique visitors, or nothing while Redis does not answer (the next page
        view of the cell publishes it)."""
        assert self.visitors is not None
        try:
            count = await self.visitors.count([key])
        except (RedisError, OSError) as exc:
            self.metrics.view_errors.inc()
            log.warning("could not count the unique visitors of %s (%s)", key, exc)
            return []
        return [unique_visitors_update(key, state, count, window_end)]

    async def _write_view(self, updates: list[tuple[KpiKey, KpiUpdate]]) -> None:
        assert self.view is not None
        try:
            await self.view.write(updates)
        except (RedisError, OSError) as exc:
            self.metrics.view_errors.inc()
            log.warning("could not update the Redis view (%s); the topics have the values", exc)


def register_kpi_agent(
    app: faust.App,
    deltas: faust.TopicT,
    updates: faust.TopicT,
    results: faust.TopicT,
    table: TableT[bytes, bytes],
    metrics: Metrics,
    settings: Settings,
) -> KpiTableAgent:
    body = KpiTableAgent(table, updates, results, metrics, settings)

    async def forget_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[Any] = args[0]
        body.forget(tp.partition for tp in revoked if tp.topic == settings.deltas_topic)

    app.on_partitions_revoked.connect(forget_revoked)
    app.agent(deltas, name="apply_kpi_deltas")(body.process)
    return body
