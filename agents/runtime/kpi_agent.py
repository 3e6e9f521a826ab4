"""The Faust agent that applies delta messages to the KPI table and publishes what changed.

The rules (merging, closing, expiry, replays, judging) are ``streams.core.engine.KpiEngine``'s;
this agent reads the delta topic (and, where Faust passed records by, Kafka itself), calls the
engine with the Faust table as its store, and hands each message's changes to its sinks at once
(``streams.core.emission``): the Prometheus gauges, the Redis view (one round trip) and the
Kafka topics (one produce batch per topic, the table's changelog writes among them). Only then
does it tell the engine the record's outputs are out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

import faust
import msgspec
from faust.types import TP, TableT
from faust.types.stores import StoreT

from agents.kafka.gap_reader import DeltaGapReader
from agents.kafka.outputs import KafkaOutputs
from agents.metrics.registry import Metrics
from agents.metrics.series import CampaignSeries, GaugeSink, WindowGauges
from agents.redis.connections import redis_client
from agents.redis.view import RedisView, RedisViewSink
from agents.redis.visitors import VisitorSketches
from agents.redis.waiting import until_redis_answers
from agents.settings import Settings
from streams.contracts.deltas import CellKey, is_drill_down, series_partition
from streams.contracts.outputs import KpiKey, KpiUpdate
from streams.core.alerts import AlertRule, Cause
from streams.core.cells import CellState, kpi_updates, unique_visitors_update
from streams.core.emission import Emission, EncodedUpdate, KpiSink
from streams.core.engine import KpiEngine, Outputs
from streams.core.labels import CampaignLabels

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


class TableStore:
    """The Faust table as the engine's ``CellStore``: every write goes to its changelog through
    Faust's producer (which the worker's commits wait for). The agent writes the published
    record's offset this way; everything else a message changes goes in ``BatchedTableStore``."""

    def __init__(self, table: TableT[bytes, bytes]) -> None:
        self.table = table

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.table.data.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self.table[key] = value

    def delete(self, key: bytes) -> None:
        self.table.pop(key, None)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return self.table.data.items()


class BatchedTableStore(TableStore):
    """The table, with the writes of a delta message held in memory until the agent has sent
    them to the changelog, in one produce batch with the message's outputs (Faust's producer
    sends one message per write: that was about a fifth of the agent's time). Only then do they
    go to the table's store on disk, with the changelog offset they reach: the disk never holds
    a write the changelog lacks, and a restart reads the changelog from that offset on."""

    def __init__(self, table: TableT[bytes, bytes]) -> None:
        super().__init__(table)
        self.changes: dict[bytes, bytes | None] = {}
        self._unwritten: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.changes:
            return self.changes[key]
        return super().get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.changes[key] = value

    def delete(self, key: bytes) -> None:
        self.changes[key] = None

    def take_changes(self) -> dict[bytes, bytes | None]:
        """The newest value of each key written since the last call (None: deleted), for the
        changelog; ``written`` once they are on it."""
        changes, self.changes = self.changes, {}
        self._unwritten = changes
        return changes

    def written(self, changelog: TP | None, offset: int | None) -> None:
        """The changes taken last are on the changelog, through ``offset`` of ``changelog``:
        they go to the store on disk, and then the offset a restart reads on from."""
        data = self.table.data
        for key, value in self._unwritten.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        self._unwritten = {}
        if changelog is not None and offset is not None:
            cast(StoreT[bytes, bytes], data).set_persisted_offset(changelog, offset)


class KpiTableAgent:
    """The body of the agent, with the table, topics and outputs it works on."""

    def __init__(
        self,
        table: TableT[bytes, bytes],
        metrics: Metrics,
        settings: Settings,
        alert_rules: tuple[AlertRule, ...],
    ) -> None:
        self.table = table
        self.store = BatchedTableStore(table)
        #: For the published record's offset, written after the outputs are acknowledged.
        self.direct_store = TableStore(table)
        self.engine = KpiEngine(settings.windows.policy, alert_rules)
        self.kafka_outputs = KafkaOutputs(settings, table.changelog_topic.get_topic_name())
        for rule in alert_rules:  # every series from the start, so increase() sees the first one
            for status in ("firing", "resolved"):
                for cause in Cause:
                    metrics.alerts.labels(rule.name, rule.kpi.name, status, cause.value)
            for result in ("ok", "breach", "unjudged"):
                metrics.alert_judgements.labels(rule.name, result)
        self.metrics = metrics
        self.counters = {
            "deltas_invalid": metrics.deltas_invalid,
            "deltas_replayed": metrics.deltas_replayed,
            "deltas_after_retention": metrics.deltas_after_retention,
            "deltas_applied": metrics.deltas_applied,
            "revisions": metrics.revisions,
            "cells_closed": metrics.cells_closed,
            "cells_expired": metrics.cells_expired,
        }
        self.settings = settings
        self.smallest_window = min(settings.windows.windowing.sizes)
        self.current = WindowGauges(metrics.kpi_current, metrics.kpi_current_window_start)
        self.last_closed = WindowGauges(metrics.kpi_last_closed, metrics.kpi_last_closed_window_start)
        labels = CampaignLabels(
            settings.metrics.metrics_top_campaigns,
            settings.metrics.metrics_campaign_idle_seconds,
            time.monotonic,
        )
        self.campaigns = CampaignSeries(metrics, labels, [self.current, self.last_closed])
        self.gap_reader = DeltaGapReader(settings)
        self.visitors: VisitorSketches | None = None
        #: In the order they are served: gauges and the view before the topics.
        self.sinks: list[KpiSink] = []

    def revoke(self, partitions: Iterable[int]) -> None:
        """Drop the indexes of revoked partitions; they are rebuilt if they come back."""
        self.engine.revoke(partitions)

    def assign(self, partitions: Iterable[int]) -> None:
        """After a rebalance: the partitions to index, and the gauges to keep. Gauges of series
        on partitions this worker no longer has are dropped: their new owner reports them, and
        a stale copy here would stay on a board next to it. (Faust revokes every partition at
        each rebalance, so gauges of partitions that come back are kept.)"""
        owned, count = set(partitions), self.settings.topics.partitions
        self.engine.assign(owned)
        for gauges in (self.current, self.last_closed):
            gauges.drop_where(
                lambda channel, campaign: series_partition(channel, campaign, count) not in owned
            )

    def is_behind(self) -> bool:
        """Whether delta messages are waiting for the agent (``KpiEngine.is_behind``). Ingest
        then flushes seldom, so the agent gets fewer, larger messages; publishing KPI updates
        per message costs the same for 10 deltas as for 500."""
        consumer = self.table.app.consumer
        topic = self.settings.topics.deltas_topic
        return self.engine.is_behind(
            {partition: _highwater(consumer, TP(topic, partition)) for partition in self.engine.partitions}
        )

    async def process(self, stream: faust.StreamT[bytes]) -> None:
        # Made here, inside the worker's event loop, which the Redis client binds to.
        client = redis_client(self.settings, socket_timeout=5)
        view = RedisView(client, self.settings.topics.topic_prefix)
        self.visitors = VisitorSketches(client, self.settings.topics.app_id)
        self.sinks = [
            GaugeSink(self.campaigns, self.current, self.last_closed),
            RedisViewSink(view, self.metrics.redis_up, self.metrics.view_errors),
            self.kafka_outputs,
        ]
        await self.kafka_outputs.start()
        try:
            async for event in stream.events():
                partition, offset = event.message.partition, event.message.offset
                if gap := self.engine.gap(partition, offset, self.store):
                    await self._read_gap(partition, gap)
                await self._on_record(partition, offset, event.value)
        finally:
            await self.gap_reader.stop()
            await self.kafka_outputs.stop()

    async def _read_gap(self, partition: int, gap: range) -> None:
        """Apply (or publish again) what Kafka holds at ``gap``, before the record after it."""
        records = await self.gap_reader.read(partition, gap)
        self.metrics.delta_gap_reads.inc()
        if records:
            self.metrics.delta_gap_records.inc(len(records))
            log.warning(
                "delta partition %d: Faust passed by %d records at offsets %d-%d (never delivered, "
                "or applied by a worker that died before publishing); applying them from Kafka",
                partition,
                len(records),
                gap.start,
                gap.stop - 1,
            )
        for record_offset, value in records:
            await self._on_record(partition, record_offset, value)

    async def _on_record(self, partition: int, offset: int, value: bytes | None) -> None:
        """Fold one delta message into the table (synchronously: every table write of the
        message happens before any output is awaited), hand what it changed to the sinks, then
        record in the table that its outputs are out."""
        outputs = self.engine.apply(partition, offset, value, self.store)
        self._count(outputs)
        changes = self.store.take_changes()
        if outputs.counts["deltas_invalid"]:
            emission = Emission(partition, table_changes=changes)
        else:
            emission = Emission(partition, await self._updates(outputs), list(outputs.alerts), changes)
        for sink in self.sinks:
            await sink.emit(emission)
        changelog = TP(self.kafka_outputs.changelog_topic, partition)
        self.store.written(changelog, self.kafka_outputs.changelog_end)
        self.engine.published(partition, offset, self.direct_store)

    def _count(self, outputs: Outputs) -> None:
        for name, amount in outputs.counts.items():
            self.counters[name].inc(amount)
        for delta in outputs.applied:
            if not is_drill_down(delta.channel, delta.campaign):
                smallest = delta.window_seconds == self.smallest_window
                self.campaigns.observe(delta.key, delta.measures, smallest)
        if outputs.low_watermark is not None:
            self.metrics.low_watermark.set(outputs.low_watermark)
        for (rule, result), amount in outputs.judgements.items():
            self.metrics.alert_judgements.labels(rule, result).inc(amount)
        for event in outputs.fired:
            self.metrics.alerts.labels(event.rule, event.kpi, event.status, event.cause).inc()

    async def _updates(self, outputs: Outputs) -> list[EncodedUpdate]:
        """The KPI updates of every changed cell (unique visitors read from Redis where page
        views came), each encoded once."""
        now = datetime.now(UTC)
        updates: list[tuple[KpiKey, KpiUpdate]] = []
        counted: list[tuple[CellKey, CellState, int | None]] = []
        for key, (state, changed) in outputs.cells.items():
            window_end = self.engine.window_end(key)
            updates += kpi_updates(key, state, changed, window_end, now)
            if "page_views" in changed:
                counted.append((key, state, window_end))
        if counted:
            updates += await self._unique_visitors(counted, now)
        return [EncodedUpdate(key, update, _encoder.encode(update)) for key, update in updates]

    async def _unique_visitors(
        self, cells: list[tuple[CellKey, CellState, int | None]], now: datetime
    ) -> list[tuple[KpiKey, KpiUpdate]]:
        """The unique visitors of cells with new page views (waiting for Redis if it is down)."""
        visitors = self.visitors
        assert visitors is not None
        keys = [key for key, _, _ in cells]
        counts = await until_redis_answers(
            lambda: visitors.count_each(keys),
            "unique visitor counts",
            self.metrics.redis_up,
            self.metrics.view_errors,
        )
        return [
            unique_visitors_update(key, state, count, window_end, now)
            for (key, state, window_end), count in zip(cells, counts, strict=True)
        ]


def _highwater(consumer: Any, tp: TP) -> int | None:
    """The partition's end as last fetched; None before a fetch, or when a rebalance has just
    taken the partition away (aiokafka asserts it is assigned)."""
    try:
        end: int | None = consumer.highwater(tp)
    except (AssertionError, AttributeError):
        return None
    return end


def register_kpi_agent(
    app: faust.App,
    deltas: faust.TopicT,
    table: TableT[bytes, bytes],
    metrics: Metrics,
    settings: Settings,
    alert_rules: tuple[AlertRule, ...],
) -> KpiTableAgent:
    body = KpiTableAgent(table, metrics, settings, alert_rules)

    async def revoke(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[Any] = args[0]
        body.revoke(tp.partition for tp in revoked if tp.topic == settings.topics.deltas_topic)

    async def assign(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned: set[Any] = args[0]
        body.assign(tp.partition for tp in assigned if tp.topic == settings.topics.deltas_topic)

    app.on_partitions_revoked.connect(revoke)
    app.on_partitions_assigned.connect(assign)
    app.agent(deltas, name="apply_kpi_deltas")(body.process)
    return body
