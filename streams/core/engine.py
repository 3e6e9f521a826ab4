"""The KPI engine: what one delta message does to the KPI table, and what it publishes.

Each message of the delta topic is a batch from one ingest flush: cell deltas, then watermark
marks (ingest's event-time progress per raw partition). ``KpiEngine.apply`` folds a whole
message into the table through a ``CellStore`` and returns its ``Outputs``: every changed cell
once in its newest state, the alert events, and counts for the metrics. It does no I/O of its
own; the agent reads Kafka, calls it, publishes the outputs and then calls ``published``.

Per delta partition the engine keeps a ``PartitionWindows`` index and a ``DeltaContinuity``,
rebuilt from the table after every assignment. Ingest puts every window of a channel and
campaign on one delta partition, so the engine that closes a series' windows sees all of them,
in order, and judges each one once, counting a window without a cell as zero (a source that
stopped sending). Each watched series keeps its ``SeriesState`` in the table next to the cells.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from streams.contracts.deltas import ALL_TIME, CellKey, Delta, DeltaBatch, WatermarkMark
from streams.contracts.outputs import AlertEvent, alert_key
from streams.core import table_keys
from streams.core.alerts import (
    AlertRule,
    SeriesState,
    alert_event,
    judge_next,
    newest_closed_start,
    observation_of,
    windows_between,
)
from streams.core.cells import CellState, apply_delta
from streams.core.closing import MarkState, PartitionWindows, close_cell, merge_mark
from streams.core.continuity import DeltaContinuity, unapplied_messages
from streams.core.table_keys import Kind, TableKey
from streams.core.windows import WindowPolicy

log = logging.getLogger(__name__)

_batch_decoder = msgspec.json.Decoder(DeltaBatch)
_state_decoder = msgspec.json.Decoder(CellState)
_mark_state_decoder = msgspec.json.Decoder(MarkState)
_series_state_decoder = msgspec.json.Decoder(SeriesState)
_offset_decoder = msgspec.json.Decoder(int)
_encoder = msgspec.json.Encoder()

#: Unapplied delta offsets per owned partition beyond which the agent counts as behind: two of
#: ingest's flushes, a message and a transaction marker each.
BEHIND_OFFSETS_PER_PARTITION = 4


class CellStore(Protocol):
    """The table the engine keeps its state in (the agent's Faust table, a dict in tests)."""

    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def items(self) -> Iterable[tuple[bytes, bytes]]: ...


@dataclass(slots=True)
class Outputs:
    """What one delta message publishes and counts.

    ``cells``: each changed cell once, in its newest state, with the measures whose KPIs changed
    (all of them for a final result); a cell a message both updates and closes gets only its
    final result. ``alerts``: (Kafka key, encoded event) to send; ``fired``: the new ones among
    them. ``applied``: deltas folded in for the first time. ``counts``: what happened, by name
    of the agent's counter; ``judgements``: (rule, ok/breach/unjudged) of the windows judged.
    """

    cells: dict[CellKey, tuple[CellState, set[str]]] = field(default_factory=dict)
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    fired: list[AlertEvent] = field(default_factory=list)
    applied: list[Delta] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    judgements: Counter[tuple[str, str]] = field(default_factory=Counter)
    low_watermark: float | None = None

    def cell(self, key: CellKey, state: CellState, changed: Iterable[str]) -> None:
        earlier = self.cells.pop(key, None)
        measures = set(changed) if earlier is None else earlier[1].union(changed)
        self.cells[key] = (state, measures)


@dataclass(slots=True)
class DeltaPartition:
    """What the engine knows of one delta partition it owns."""

    windows: PartitionWindows
    continuity: DeltaContinuity
    #: Per rule: the watched series of this partition, by (channel, campaign).
    alert_series: defaultdict[str, dict[tuple[str, str], SeriesState]]
    #: Per rule: the newest window start judged on this partition since it was assigned.
    alert_through: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Record:
    """The delta message being applied, and where its changes go."""

    owned: DeltaPartition
    partition: int
    offset: int
    #: The message was applied before (a replay after a crash): it only publishes again.
    replay: bool
    outputs: Outputs
    store: CellStore


class KpiEngine:
    """The KPI table's rules over the delta partitions this worker owns."""

    def __init__(
        self,
        policy: WindowPolicy,
        alert_rules: tuple[AlertRule, ...],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.policy = policy
        self.alert_rules = alert_rules
        self.clock = clock
        self.partitions: dict[int, DeltaPartition] = {}
        #: Table entries of assigned partitions not indexed yet, from one scan of the table.
        self._unindexed: dict[int, list[tuple[TableKey, bytes]]] | None = None
        self._expected: set[int] = set()

    def assign(self, partitions: Iterable[int]) -> None:
        """The delta partitions this worker now owns; each is indexed from the table, all of
        them from one scan, when its first record comes (Faust has recovered the table then)."""
        self._expected = set(partitions)
        self._unindexed = None

    def revoke(self, partitions: Iterable[int]) -> None:
        """Drop the indexes of revoked partitions; they are rebuilt if they come back."""
        for partition in partitions:
            self.partitions.pop(partition, None)
        self._unindexed = None

    def partition(self, partition: int, offset: int, store: CellStore) -> DeltaPartition:
        owned = self.partitions.get(partition)
        if owned is None:
            if self._unindexed is None:
                wanted = self._expected | {partition}
                grouped = table_keys.by_partition(store.items())
                if grouped.unknown:
                    log.error(
                        "the KPI table holds %d entries of no known key layout (an earlier version's?); "
                        "they are ignored, so their counts start again from zero: run this version "
                        "with a new MKPI_TOPIC_PREFIX, or the earlier one to finish the old table",
                        grouped.unknown,
                    )
                self._unindexed = {p: entries for p, entries in grouped.entries.items() if p in wanted}
            owned = self.partitions[partition] = self._index(
                partition, offset, self._unindexed.pop(partition, [])
            )
            if not self._unindexed:
                self._unindexed = {}  # every expected partition found is indexed: free the scan
        return owned

    def _index(self, partition: int, offset: int, entries: list[tuple[TableKey, bytes]]) -> DeltaPartition:
        """Index a partition's cells, marks and series from its (recovered) table entries.
        Every record the engine applies writes its offset there, so the highest one is how
        far it got; the partition's published key says up to where the outputs went out too."""
        windows = PartitionWindows(self.policy)
        continuity = DeltaContinuity()
        alert_series: defaultdict[str, dict[tuple[str, str], SeriesState]] = defaultdict(dict)
        for key, raw_value in entries:
            if key.kind is Kind.CELL:
                state = _state_decoder.decode(raw_value)
                windows.add(key.cell(), state)
                continuity.applied(state.applied_offset)
            elif key.kind is Kind.MARK:
                mark_state = _mark_state_decoder.decode(raw_value)
                windows.record_mark(mark_state.mark)
                continuity.applied(mark_state.applied_offset)
            elif key.kind is Kind.PUBLISHED:
                continuity.published(_offset_decoder.decode(raw_value))
            else:
                rule, channel, campaign = (str(part) for part in key.parts)
                alert_series[rule][(channel, campaign)] = _series_state_decoder.decode(raw_value)
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

    def gap(self, partition: int, offset: int, store: CellStore) -> range:
        """The offsets to read back from Kafka (and apply) before the record at ``offset``."""
        return self.partition(partition, offset, store).continuity.gap(offset)

    def is_behind(self, highwaters: Mapping[int, int | None]) -> bool:
        """Whether more than two of ingest's flushes (a message and a marker each) per owned
        partition wait to be applied, by the partitions' ends as last fetched."""
        applied = {
            partition: owned.continuity.applied_through for partition, owned in self.partitions.items()
        }
        waiting = unapplied_messages({p: highwaters.get(p) for p in self.partitions}, applied)
        return waiting > BEHIND_OFFSETS_PER_PARTITION * len(self.partitions)

    def apply(self, partition: int, offset: int, value: bytes | None, store: CellStore) -> Outputs:
        """Fold one delta message into the table; a message applied before (a replay) changes
        nothing and gives the same outputs again."""
        owned = self.partition(partition, offset, store)
        outputs = Outputs()
        try:
            batch = _batch_decoder.decode(value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            outputs.counts["deltas_invalid"] += 1
            log.error("skipping undecodable delta message at %s/%s: %s", partition, offset, exc)
            return outputs
        record = _Record(owned, partition, offset, owned.continuity.was_applied(offset), outputs, store)
        for delta in batch.deltas:
            self._on_delta(record, delta)
        if batch.marks:
            self._on_marks(record, batch.marks)
        return outputs

    def published(self, partition: int, offset: int, store: CellStore) -> None:
        """Record that the outputs of the record at ``offset`` are acknowledged by the broker."""
        owned = self.partition(partition, offset, store)
        if offset > owned.continuity.published_through:
            store.put(table_keys.published_key(partition), _encoder.encode(offset))
        owned.continuity.published(offset)

    def _on_delta(self, record: _Record, delta: Delta) -> None:
        windows, key, outputs, store = record.owned.windows, delta.key, record.outputs, record.store
        partition, offset = record.partition, record.offset
        stored_key = table_keys.cell_key(partition, key)
        if windows.is_expired(key):
            if record.replay:
                # Applied before its window expired. The cell is still stored when the message
                # that expired it was this one (cells a message changes outlive it by a mark),
                # and its outputs may have died with a worker: publish them again.
                outputs.counts["deltas_replayed"] += 1
                if (raw := store.get(stored_key)) is not None:
                    outputs.cell(key, _state_decoder.decode(raw), delta.measures)
                return
            outputs.counts["deltas_after_retention"] += 1
            log.error(
                "dropping a delta for %s at %s/%s: its window is past retention", key, partition, offset
            )
            return
        stored = None if (raw := store.get(stored_key)) is None else _state_decoder.decode(raw)
        state = apply_delta(stored, delta, offset, partition, windows.is_closed(key))
        if state is None:
            # Applied before a crash; its outputs may not have reached the topics (the changelog
            # write can land while they are lost), so publish them again: consumers keep the
            # latest value per key (and revision), so a repeat is harmless.
            outputs.counts["deltas_replayed"] += 1
            assert stored is not None
            state = stored
        else:
            store.put(stored_key, _encoder.encode(state))
            windows.add(key, state)
            outputs.counts["deltas_applied"] += 1
            if state.revision:
                outputs.counts["revisions"] += 1
                self._revise_alert_history(record, key, state)
            outputs.applied.append(delta)
        outputs.cell(key, state, delta.measures)

    def _on_marks(self, record: _Record, marks: list[WatermarkMark]) -> None:
        windows, outputs, store = record.owned.windows, record.outputs, record.store
        partition, offset = record.partition, record.offset
        replayed = False
        for mark in marks:
            stored_key = table_keys.mark_key(partition, mark.raw_partition, mark.counted_partition)
            stored = None if (raw := store.get(stored_key)) is None else _mark_state_decoder.decode(raw)
            merged = merge_mark(stored, mark, offset)
            if merged is None:
                replayed = True
            else:
                store.put(stored_key, _encoder.encode(merged))
                windows.record_mark(merged.mark)
        if replayed:
            # Re-send the final results these marks produced before the crash.
            for key in sorted(windows.closed_by(offset)):
                if (raw_state := store.get(table_keys.cell_key(partition, key))) is not None:
                    state = _state_decoder.decode(raw_state)
                    outputs.cell(key, state, state.measures)
        low = windows.low_watermark
        if low is None:
            return
        outputs.low_watermark = low
        closed: list[CellKey] = []
        for key in windows.due():
            stored_key = table_keys.cell_key(partition, key)
            raw_state = store.get(stored_key)
            if raw_state is None:
                continue
            state = close_cell(_state_decoder.decode(raw_state), offset)
            store.put(stored_key, _encoder.encode(state))
            windows.add(key, state)
            outputs.counts["cells_closed"] += 1
            closed.append(key)
            outputs.cell(key, state, state.measures)
        for rule in self.alert_rules:
            self._judge(record, rule, closed, low, replayed)
        for key in windows.expired(keep=outputs.cells):
            store.delete(table_keys.cell_key(partition, key))
            outputs.counts["cells_expired"] += 1

    def _judge(
        self, record: _Record, rule: AlertRule, closed: list[CellKey], low: float, replay: bool
    ) -> None:
        """Judge every window of ``rule``'s series that the low watermark has closed since the
        last mark, in order; a window without a cell counts as zero. A series starts being
        watched with its first closed cell. On a replay of the message that judged last, the
        alert events it produced are sent again (their incident id makes repeats recognisable)."""
        size = rule.window_seconds
        through = newest_closed_start(self.policy, size, low)
        rule_cells = [
            key
            for key in closed
            if key.window_seconds == size and rule.scope.covers(key.channel, key.campaign)
        ]
        owned = record.owned
        if not replay and not rule_cells and owned.alert_through.get(rule.name) == through:
            return  # the usual mark: no window of this size closed since the last one
        owned.alert_through[rule.name] = through
        watched = owned.alert_series[rule.name]
        for key in rule_cells:
            if (key.channel, key.campaign) not in watched:
                before = self.policy.windowing.start(size, key.window_start - 1)
                watched[(key.channel, key.campaign)] = SeriesState(
                    judged_through=before, partition=record.partition
                )
        for (channel, campaign), state in list(watched.items()):
            if state.judged_through >= through:
                if replay and state.judged_by == record.offset:
                    topic_key = alert_key(rule.name, channel, campaign)
                    record.outputs.alerts.extend((topic_key, body) for body in state.last_events)
                continue
            self._judge_series(record, rule, channel, campaign, state, through)

    def _judge_series(
        self, record: _Record, rule: AlertRule, channel: str, campaign: str, state: SeriesState, through: int
    ) -> None:
        outputs, store, partition = record.outputs, record.store, record.partition
        size = rule.window_seconds
        series = (rule.kpi.name, size, channel, campaign)
        events = []
        now = self.clock()
        for start in windows_between(self.policy.windowing, size, state.judged_through, through):
            raw_cell = store.get(table_keys.cell_key(partition, CellKey(size, start, channel, campaign)))
            measures = None if raw_cell is None else _state_decoder.decode(raw_cell).measures
            outcome = judge_next(rule, series, state, start, observation_of(rule, measures))
            judged = outcome.judged
            result = "unjudged" if judged is None else "breach" if judged.breached else "ok"
            outputs.judgements[(rule.name, result)] += 1
            events += [alert_event(rule, series, transition, now) for transition in outcome.transitions]
        state.judged_by = record.offset
        state.last_events = [_encoder.encode(event) for event in events]
        stored_key = table_keys.alert_key(partition, rule.name, channel, campaign)
        if state.is_idle() and not events:  # with events, kept for a replay to re-send them
            store.delete(stored_key)
            del record.owned.alert_series[rule.name][(channel, campaign)]
        else:
            store.put(stored_key, _encoder.encode(state))
        topic_key = alert_key(rule.name, channel, campaign)
        for event, body in zip(events, state.last_events, strict=True):
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
            outputs.fired.append(event)
            outputs.alerts.append((topic_key, body))

    def _revise_alert_history(self, record: _Record, key: CellKey, state: CellState) -> None:
        """A closed window's cell changed (a late event): later baselines read the new value."""
        for rule in self.alert_rules:
            if rule.window_seconds != key.window_seconds:
                continue
            series_state = record.owned.alert_series[rule.name].get((key.channel, key.campaign))
            if series_state is not None and key.window_start in series_state.observations:
                series_state.revise(key.window_start, observation_of(rule, state.measures))
                stored_key = table_keys.alert_key(record.partition, rule.name, key.channel, key.campaign)
                record.store.put(stored_key, _encoder.encode(series_state))

    def window_end(self, key: CellKey) -> int | None:
        """The exclusive end of a cell's window; None for a running total."""
        if key.window_seconds == ALL_TIME:
            return None
        return self.policy.windowing.end(key.window_seconds, key.window_start)
