"""The agent that folds cell deltas into the KPI table, closes windows, publishes KPIs and
judges the drop alert rules on every closed window.

Each message of the delta topic is a batch from one ingest flush: cell deltas, then watermark
marks (ingest's event-time progress per raw partition). The agent folds a whole message into
the table, then publishes what it changed at once: one Redis round trip for the view, one for
unique visitors, and one produce batch per output topic. Per delta partition the agent keeps a
``PartitionWindows`` index and a ``DeltaContinuity``, both rebuilt from the table after every
assignment; the pure rules live in ``streams.kpis`` (merging), ``streams.closing`` (life
cycle), ``streams.continuity`` (no record left out) and ``streams.alerts`` (judging).

Ingest puts every window of a channel and campaign on one delta partition, so the agent that
closes a series' windows sees all of them, in order, and judges each one once, counting a window
without a cell as zero (a source that stopped sending). Each watched series keeps its
``SeriesState`` in the table next to the cells.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
import msgspec
from faust.types import TP, TableT

from agents.gap_reader import DeltaGapReader
from agents.outputs import OutputMessage, OutputPublisher
from streams.alerts import (
    AlertRule,
    Cause,
    SeriesState,
    alert_event,
    judge_next,
    newest_closed_start,
    observation_of,
    windows_between,
)
from streams.catalog import SUM_MEASURES
from streams.closing import MarkState, PartitionWindows, close_cell, mark_key, merge_mark
from streams.connections import redis_client
from streams.continuity import DeltaContinuity, published_key, unapplied_messages
from streams.kpis import (
    ALL,
    ALL_TIME,
    CellKey,
    CellState,
    Delta,
    DeltaBatch,
    KpiKey,
    KpiUpdate,
    apply_delta,
    kpi_updates,
    series_partition,
    unique_visitors_update,
    window_label,
)
from streams.labels import CampaignLabels
from streams.metrics import Metrics
from streams.redis_wait import until_redis_answers
from streams.settings import Settings
from streams.view import RedisView
from streams.visitors import VisitorSketches
from streams.watermarks import WatermarkMark

log = logging.getLogger(__name__)

_batch_decoder = msgspec.json.Decoder(DeltaBatch)
_state_decoder = msgspec.json.Decoder(CellState)
_mark_state_decoder = msgspec.json.Decoder(MarkState)
_series_state_decoder = msgspec.json.Decoder(SeriesState)
_key_decoder = msgspec.json.Decoder(list[int | str])
_offset_decoder = msgspec.json.Decoder(int)
_encoder = msgspec.json.Encoder()

Series = tuple[str, int, str, str]
#: Unapplied delta offsets per owned partition beyond which the agent counts as behind: two of
#: ingest's flushes, a message and a transaction marker each.
BEHIND_OFFSETS_PER_PARTITION = 4


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
        self.drop_where(lambda channel, campaign: campaign in campaigns)

    def drop_where(self, dropped: Callable[[str, str], bool]) -> None:
        """Remove the series of every (channel, campaign) ``dropped`` names."""
        for series in [s for s in self._newest_start if dropped(s[2], s[3])]:
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


def alert_key(rule: str, channel: str, campaign: str) -> bytes:
    """Table key of a watched series' alert state (never a cell key: those start with a number)."""
    return msgspec.json.encode(("alert", rule, channel, campaign))


@dataclass(slots=True)
class Outputs:
    """What one delta message publishes: each changed cell once, in its newest state, with the
    measures whose KPIs changed (all of them for a final result); then alert events (table
    key, encoded event). A cell a message both updates and closes gets only its final result."""

    cells: dict[CellKey, tuple[CellState, set[str]]] = field(default_factory=dict)
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)

    def cell(self, key: CellKey, state: CellState, changed: Iterable[str]) -> None:
        earlier = self.cells.pop(key, None)
        measures = set(changed) if earlier is None else earlier[1].union(changed)
        self.cells[key] = (state, measures)


@dataclass(slots=True)
class DeltaPartition:
    """What the agent knows of one delta partition it owns."""

    windows: PartitionWindows
    continuity: DeltaContinuity
    #: Per rule: the watched series of this partition, by (channel, campaign).
    alert_series: defaultdict[str, dict[tuple[str, str], SeriesState]]
    #: Per rule: the newest window start judged on this partition since it was assigned.
    alert_through: dict[str, int] = field(default_factory=dict)


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
        self.publisher = OutputPublisher(settings)
        self.alert_rules = alert_rules
        for rule in alert_rules:  # every series from the start, so increase() sees the first one
            for status in ("firing", "resolved"):
                for cause in Cause:
                    metrics.alerts.labels(rule.name, status, cause.value)
            for result in ("ok", "breach", "unjudged"):
                metrics.alert_judgements.labels(rule.name, result)
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
        self.partitions: dict[int, DeltaPartition] = {}
        self.gap_reader = DeltaGapReader(settings)
        self.view: RedisView | None = None
        self.visitors: VisitorSketches | None = None

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the indexes of revoked partitions; they are rebuilt if they come back."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def keep_gauges_of(self, assigned: Iterable[int]) -> None:
        """After a rebalance, drop the gauges of series on partitions this worker no longer
        has: their new owner reports them, and a stale copy here would stay on a board next
        to it. (Faust revokes every partition at each rebalance, so gauges of partitions that
        come back are kept.)"""
        owned, count = set(assigned), self.settings.partitions
        for gauges in (self.current, self.last_closed):
            gauges.drop_where(
                lambda channel, campaign: series_partition(channel, campaign, count) not in owned
            )

    def is_behind(self) -> bool:
        """Whether delta messages are waiting for the agent: more than two of ingest's flushes
        (a message and a marker each) per owned partition. Ingest then flushes seldom, so the
        agent gets fewer, larger messages; publishing KPI updates per message costs the same
        for 10 deltas as for 500."""
        consumer = self.table.app.consumer
        highwaters = {
            partition: _highwater(consumer, TP(self.settings.deltas_topic, partition))
            for partition in self.partitions
        }
        applied = {
            partition: owned.continuity.applied_through for partition, owned in self.partitions.items()
        }
        return unapplied_messages(highwaters, applied) > BEHIND_OFFSETS_PER_PARTITION * len(self.partitions)

    def _partition(self, partition: int, offset: int) -> DeltaPartition:
        owned = self.partitions.get(partition)
        if owned is None:
            owned = self.partitions[partition] = self._rebuild(partition, offset)
        return owned

    def _rebuild(self, partition: int, offset: int) -> DeltaPartition:
        """Index the partition's cells and marks from the (recovered) table. Every record the
        agent applies writes its offset there, so the highest one is how far it got; the
        partition's published key says up to where the outputs went out too."""
        settings = self.settings
        windows = PartitionWindows(self.windowing, settings.grace_seconds, settings.window_retention_seconds)
        continuity = DeltaContinuity()
        alert_series: defaultdict[str, dict[tuple[str, str], SeriesState]] = defaultdict(dict)
        for raw_key, raw_value in self.table.items():
            key = _key_decoder.decode(raw_key)
            if key[0] == "watermark":  # ["watermark", delta partition, raw partition]
                if key[1] == partition:
                    mark_state = _mark_state_decoder.decode(raw_value)
                    windows.record_mark(mark_state.mark)
                    continuity.applied(mark_state.applied_offset)
                continue
            if key[0] == "published":  # ["published", delta partition]
                if key[1] == partition:
                    continuity.published(_offset_decoder.decode(raw_value))
                continue
            if key[0] == "alert":  # ["alert", rule, channel, campaign]
                series_state = _series_state_decoder.decode(raw_value)
                if series_state.partition == partition:
                    alert_series[str(key[1])][(str(key[2]), str(key[3]))] = series_state
                continue
            state = _state_decoder.decode(raw_value)
            if state.partition == partition:
                size, start, channel, campaign = key
                windows.add(CellKey(int(size), int(start), str(channel), str(campaign)), state)
                continuity.applied(state.applied_offset)
        log.info(
            "delta partition %d resumes at offset %d, applied through %d, published through %d, "
            "with %d cells, %d raw partition marks and %d watched series",
            partition,
            offset,
            continuity.applied_through,
            continuity.published_through,
            len(windows),
            len(windows.marks),
            sum(len(series) for series in alert_series.values()),
        )
        return DeltaPartition(windows, continuity, alert_series)

    async def process(self, stream: faust.StreamT[bytes]) -> None:
        # Made here, inside the worker's event loop, which the Redis client binds to.
        client = redis_client(self.settings, socket_timeout=5)
        self.view = RedisView(client, self.settings.topic_prefix)
        self.visitors = VisitorSketches(client, self.settings.app_id)
        await self.publisher.start()
        try:
            async for event in stream.events():
                partition, offset = event.message.partition, event.message.offset
                owned = self._partition(partition, offset)
                if gap := owned.continuity.gap(offset):
                    await self._read_gap(owned, partition, gap)
                await self._on_record(owned, partition, offset, event.value)
        finally:
            await self.gap_reader.stop()
            await self.publisher.stop()

    async def _read_gap(self, owned: DeltaPartition, partition: int, gap: range) -> None:
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
            await self._on_record(owned, partition, record_offset, value)

    async def _on_record(
        self, owned: DeltaPartition, partition: int, offset: int, value: bytes | None
    ) -> None:
        """Fold one delta message into the table (synchronously: every table write of the
        message happens before any output is awaited), publish what it changed, then record
        in the table that its outputs are out."""
        replay = owned.continuity.was_applied(offset)
        try:
            batch = _batch_decoder.decode(value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.metrics.deltas_invalid.inc()
            log.error("skipping undecodable delta message at %s/%s: %s", partition, offset, exc)
        else:
            outputs = Outputs()
            for delta in batch.deltas:
                self._on_delta(owned, delta, partition, offset, replay, outputs)
            if batch.marks:
                self._on_marks(owned, batch.marks, partition, offset, outputs)
            await self._publish(partition, outputs)
        if offset > owned.continuity.published_through:
            self.table[published_key(partition)] = _encoder.encode(offset)
        owned.continuity.published(offset)

    def _on_delta(
        self, owned: DeltaPartition, delta: Delta, partition: int, offset: int, replay: bool, outputs: Outputs
    ) -> None:
        windows, key = owned.windows, delta.key
        table_key = key.encode()
        if windows.is_expired(key):
            if replay:
                # Applied before its window expired. The cell is still stored when the message
                # that expired it was this one (cells a message changes outlive it by a mark),
                # and its outputs may have died with a worker: publish them again.
                self.metrics.deltas_replayed.inc()
                if (raw := self.table.get(table_key)) is not None:
                    outputs.cell(key, _state_decoder.decode(raw), delta.measures)
                return
            self.metrics.deltas_after_retention.inc()
            log.error(
                "dropping a delta for %s at %s/%s: its window is past retention", key, partition, offset
            )
            return
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
                self._revise_alert_history(owned, key, state)
            self.campaigns.observe(key, delta.measures, key.window_seconds == self.smallest_window)
        outputs.cell(key, state, delta.measures)

    def _on_marks(
        self,
        owned: DeltaPartition,
        marks: list[WatermarkMark],
        partition: int,
        offset: int,
        outputs: Outputs,
    ) -> None:
        windows = owned.windows
        replayed = False
        for mark in marks:
            table_key = mark_key(partition, mark.raw_partition)
            stored = None if (raw := self.table.get(table_key)) is None else _mark_state_decoder.decode(raw)
            merged = merge_mark(stored, mark, offset)
            if merged is None:
                replayed = True
            else:
                self.table[table_key] = _encoder.encode(merged)
                windows.record_mark(merged.mark)
        if replayed:
            # Re-send the final results these marks produced before the crash.
            for key in sorted(windows.closed_by(offset)):
                if (raw_state := self.table.get(key.encode())) is not None:
                    state = _state_decoder.decode(raw_state)
                    outputs.cell(key, state, state.measures)
        low = windows.low_watermark
        if low is None:
            return
        self.metrics.low_watermark.set(low)
        closed: list[CellKey] = []
        for key in windows.due():
            table_cell = key.encode()
            raw_state = self.table.get(table_cell)
            if raw_state is None:
                continue
            state = close_cell(_state_decoder.decode(raw_state), offset)
            self.table[table_cell] = _encoder.encode(state)
            windows.add(key, state)
            self.metrics.cells_closed.inc()
            closed.append(key)
            outputs.cell(key, state, state.measures)
        for rule in self.alert_rules:
            self._judge(owned, rule, closed, low, partition, offset, replayed, outputs)
        for key in windows.expired(keep=outputs.cells):
            self.table.pop(key.encode(), None)
            self.metrics.cells_expired.inc()

    def _judge(
        self,
        owned: DeltaPartition,
        rule: AlertRule,
        closed: list[CellKey],
        low: float,
        partition: int,
        offset: int,
        replay: bool,
        outputs: Outputs,
    ) -> None:
        """Judge every window of ``rule``'s series that the low watermark has closed since the
        last mark, in order; a window without a cell counts as zero. A series starts being
        watched with its first closed cell. On a replay of the message that judged last, the
        alert events it produced are sent again (their incident id makes repeats recognisable)."""
        size = rule.window_seconds
        through = newest_closed_start(self.windowing, size, low, self.settings.grace_seconds)
        rule_cells = [
            key
            for key in closed
            if key.window_seconds == size and rule.scope.covers(key.channel, key.campaign)
        ]
        if not replay and not rule_cells and owned.alert_through.get(rule.name) == through:
            return  # the usual mark: no window of this size closed since the last one
        owned.alert_through[rule.name] = through
        watched = owned.alert_series[rule.name]
        for key in rule_cells:
            if (key.channel, key.campaign) not in watched:
                before = self.windowing.start(size, key.window_start - 1)
                watched[(key.channel, key.campaign)] = SeriesState(judged_through=before, partition=partition)
        for (channel, campaign), state in list(watched.items()):
            if state.judged_through >= through:
                if replay and state.judged_by == offset:
                    table_key = alert_key(rule.name, channel, campaign)
                    outputs.alerts.extend((table_key, body) for body in state.last_events)
                continue
            self._judge_series(owned, rule, channel, campaign, state, through, offset, outputs)

    def _judge_series(
        self,
        owned: DeltaPartition,
        rule: AlertRule,
        channel: str,
        campaign: str,
        state: SeriesState,
        through: int,
        offset: int,
        outputs: Outputs,
    ) -> None:
        size = rule.window_seconds
        series = (rule.kpi.name, size, channel, campaign)
        events = []
        now = datetime.now(UTC)
        for start in windows_between(self.windowing, size, state.judged_through, through):
            raw_cell = self.table.get(CellKey(size, start, channel, campaign).encode())
            measures = None if raw_cell is None else _state_decoder.decode(raw_cell).measures
            outcome = judge_next(rule, series, state, start, observation_of(rule, measures))
            judged = outcome.judged
            result = "unjudged" if judged is None else "breach" if judged.breached else "ok"
            self.metrics.alert_judgements.labels(rule.name, result).inc()
            events += [alert_event(rule, series, transition, now) for transition in outcome.transitions]
        state.judged_by = offset
        state.last_events = [_encoder.encode(event) for event in events]
        table_key = alert_key(rule.name, channel, campaign)
        if state.is_idle() and not events:  # with events, kept for a replay to re-send them
            self.table.pop(table_key, None)
            del owned.alert_series[rule.name][(channel, campaign)]
        else:
            self.table[table_key] = _encoder.encode(state)
        for event, body in zip(events, state.last_events, strict=True):
            self.metrics.alerts.labels(rule.name, event.status, event.cause).inc()
            log.warning(
                "alert %s: %s on %s/%s/%s since %s: %s",
                event.status,
                rule.name,
                rule.kpi.name,
                channel,
                campaign,
                event.first_breach_start.isoformat(),
                event.detail,
            )
            outputs.alerts.append((table_key, body))

    def _revise_alert_history(self, owned: DeltaPartition, key: CellKey, state: CellState) -> None:
        """A closed window's cell changed (a late event): later baselines read the new value."""
        for rule in self.alert_rules:
            if rule.window_seconds != key.window_seconds:
                continue
            series_state = owned.alert_series[rule.name].get((key.channel, key.campaign))
            if series_state is not None and key.window_start in series_state.observations:
                series_state.revise(key.window_start, observation_of(rule, state.measures))
                self.table[alert_key(rule.name, key.channel, key.campaign)] = _encoder.encode(series_state)

    async def _publish(self, partition: int, outputs: Outputs) -> None:
        """Gauges and the Redis view first, so whoever sees a value on a topic finds them
        already there; then one batch per topic: the latest values, the results of closed
        windows, and the alert events."""
        now = datetime.now(UTC)
        updates: list[tuple[KpiKey, KpiUpdate]] = []
        counted: list[tuple[CellKey, CellState, int | None]] = []
        for key, (state, changed) in outputs.cells.items():
            window_end = (
                None
                if key.window_seconds == ALL_TIME
                else self.windowing.end(key.window_seconds, key.window_start)
            )
            updates += kpi_updates(key, state, changed, window_end, now)
            if "page_views" in changed:
                counted.append((key, state, window_end))
        if counted:
            updates += await self._unique_visitors(counted, now)
        for kpi_key, update in updates:
            if self.campaigns.has_gauges(kpi_key.campaign):
                self.current.observe(kpi_key, update.value)
                if update.final:
                    self.last_closed.observe(kpi_key, update.value)
        encoded = [(kpi_key, _encoder.encode(update), update.final) for kpi_key, update in updates]
        await self._write_view([(kpi_key, body) for kpi_key, body, _ in encoded])
        settings = self.settings
        messages: list[OutputMessage] = []
        for kpi_key, body, final in encoded:
            raw_key = kpi_key.encode()
            messages.append((settings.kpi_updates_topic, raw_key, body))
            if final:
                messages.append((settings.window_results_topic, raw_key, body))
        messages += [(settings.alerts_topic, key, body) for key, body in outputs.alerts]
        if messages:
            await self.publisher.publish(partition, messages)

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

    async def _write_view(self, updates: list[tuple[KpiKey, bytes]]) -> None:
        view = self.view
        assert view is not None
        await until_redis_answers(
            lambda: view.write(updates), "the Redis view", self.metrics.redis_up, self.metrics.view_errors
        )


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

    async def forget_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[Any] = args[0]
        body.forget(tp.partition for tp in revoked if tp.topic == settings.deltas_topic)

    async def drop_moved_gauges(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned: set[Any] = args[0]
        body.keep_gauges_of(tp.partition for tp in assigned if tp.topic == settings.deltas_topic)

    app.on_partitions_revoked.connect(forget_revoked)
    app.on_partitions_assigned.connect(drop_moved_gauges)
    app.agent(deltas, name="apply_kpi_deltas")(body.process)
    return body
