"""Batch ingest: the counted topic -> typed events -> pre-aggregated deltas, exactly once.

``streams.core.ingestor.BatchIngestor`` is the pure part: it takes raw records and
accumulates deltas, bad rows and outcome counts, deciding duplicates, distinct counts and
sessions against the per-subject state of the partitions it owns. ``IngestService`` is the
stage around it (``agents.runtime.stage``): it reads the counted topic (the raw topic when
producers key it by subject, else its repartitioned copy) in batches, restores a partition's
state from the state journal when the partition is assigned and, once per flush interval,
writes the batch's deltas, bad rows and state changes with the offsets in one checkpoint
(``agents.kafka.checkpoint``), so a crash anywhere either publishes all of a batch or none of
it, and the state a new owner restores is exactly the state at the committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from agents.kafka.checkpoint import Checkpoint, OutputRefused, checkpoint_flush
from agents.kafka.state_journal import StateJournal
from agents.metrics.registry import Metrics
from agents.redis.connections import redis_client
from agents.redis.visitors import VisitorSketches
from agents.redis.waiting import until_redis_answers
from agents.runtime.partition_state import PartitionStores
from agents.runtime.stage import Batches, TransactionalStage
from agents.settings import Settings
from agents.state.rocks import StoreBudget
from streams.contracts.checkpoints import CommitPoint
from streams.contracts.outputs import IngestReport
from streams.contracts.versions import INGEST_REPORT_VERSION
from streams.core.attribution import ChannelRules
from streams.core.ingestor import BatchIngestor, DuplicateShare, Flushable, RawPartition
from streams.core.privacy import Pseudonymizer

log = logging.getLogger(__name__)

#: Records counted at a time before the event loop gets a turn (a batch is up to
#: MKPI_INGEST_MAX_RECORDS; counting one whole can hold the loop for a second).
COUNT_SLICE = 1000


class IngestService(TransactionalStage):
    """Runs in a worker of role ``all`` or ``ingest``."""

    redis: aioredis.Redis
    journal: StateJournal
    stores: PartitionStores
    visitor_sketches: VisitorSketches

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        worker_name: str,
        rules: ChannelRules,
        pseudonymizer: Pseudonymizer,
        agent_is_behind: Callable[[], bool] = lambda: False,
        **kwargs: object,
    ) -> None:
        topics = settings.topics
        super().__init__(
            settings,
            worker_name,
            role="ingest",
            topic=topics.counted_topic,
            group_id=topics.ingest_group_id,
            **kwargs,
        )
        #: Whether the KPI agent in this worker has delta messages waiting (see ``handle``).
        self.agent_is_behind = agent_is_behind
        self.metrics = metrics
        self.ingestor = BatchIngestor(settings.ingest_policy, rules, pseudonymizer)
        self.duplicate_share = DuplicateShare()
        #: Partitions assigned and resumed (offsets, watermarks and state): what readiness asks.
        self.owned_partitions = 0
        #: Partitions whose state is being restored, with the journal records left to read.
        self.restoring: dict[int, int] = {}
        self._last_flush = time.monotonic()
        self._delta_partitions = 0
        for size in settings.windows.windowing.sizes:  # exported at 0 from the start, so rate() works
            metrics.late_events.labels(f"{size}s")
        #: A visitor sketch lives until no event can reach its window, plus a day for readers.
        policy = settings.windows.policy
        self._visitor_ttls = {
            size: size + policy.grace_seconds + policy.retention_seconds + 86400
            for size in settings.windows.windowing.sizes
        }

    async def clients_started(self) -> None:
        settings = self.settings
        self.redis = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        self.visitor_sketches = VisitorSketches(self.redis, settings.topics.app_id)
        self.journal = StateJournal(settings, self.admin, progress=self._restore_progress)
        await self.journal.start()
        self.stores = PartitionStores(
            settings.worker_dir / "ingest",
            StoreBudget.from_settings(settings),
            self.journal,
            settings.ingest.state_snapshot_entries,
        )
        self._delta_partitions = len(await self.producer.partitions_for(settings.topics.deltas_topic))

    async def on_stop(self) -> None:
        try:
            await self.flush()
        finally:
            await super().on_stop()
            await self.journal.stop()
            self.stores.close_all()
            await self.redis.aclose()

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Flush, then close each revoked partition's store (it stands at the committed offset,
        and is current again if the partition comes back before another owner counts on)."""
        await self.flush()
        for tp in revoked:
            self.ingestor.revoke(RawPartition(tp.topic, tp.partition))
            self.stores.close(tp.partition)
            for gauge in (
                self.metrics.ingest_lag,
                self.metrics.partition_watermark,
                self.metrics.state_entries,
                self.metrics.state_restore_remaining,
            ):
                with contextlib.suppress(KeyError):  # never set for this partition
                    gauge.remove(str(tp.partition))
        self.owned_partitions = 0
        self.metrics.ingest_partitions.set(0)

    async def assign_partition(self, tp: TopicPartition, start: int, point: CommitPoint | None) -> None:
        raw_tp = RawPartition(tp.topic, tp.partition)
        state = await self.stores.restore(tp.partition, start, point)
        kept, read = self.stores.restored[tp.partition]
        self.metrics.state_restores.labels("kept" if kept else "rebuilt").inc()
        self.metrics.state_restore_records.inc(read)
        self.metrics.state_entries.labels(str(tp.partition)).set(len(state))
        self.ingestor.assign(raw_tp, start, None if point is None else point.watermark, state)

    def _restore_progress(self, partition: int, remaining: int) -> None:
        self.metrics.state_restore_remaining.labels(str(partition)).set(remaining)
        self.restoring[partition] = remaining
        if not remaining:
            del self.restoring[partition]

    async def assigned(self, assigned: list[TopicPartition]) -> None:
        self.ingestor.counted_partitions = len(self.consumer.partitions_for_topic(self.topic) or ())
        self.owned_partitions = len(assigned)
        self.metrics.ingest_partitions.set(len(assigned))

    async def handle(self, batches: Batches) -> None:
        """Screen and count a batch; flush often while caught up (fresh KPIs), seldom while
        behind or while the KPI agent is (more events per delta, so the backlog shrinks faster:
        the agent's cost is per delta message more than per event)."""
        ingest = self.settings.ingest
        # More than a batch waits here, or deltas wait for the agent.
        behind = self._report_lag() > ingest.ingest_max_records or self.agent_is_behind()
        if batches:
            async with self.lock:  # positions are settled (no assignment under way)
                records = [
                    record
                    for tp, batch in batches.items()
                    for record in self.ingestor.unread(RawPartition(*tp), batch)
                ]
                for start in range(0, len(records), COUNT_SLICE):
                    if start:
                        await asyncio.sleep(0)  # probes and scrapes are answered in between
                    self.ingestor.apply(self.ingestor.screen(records[start : start + COUNT_SLICE]))
        interval = ingest.backlog_flush_interval_seconds if behind else ingest.flush_interval_seconds
        if time.monotonic() - self._last_flush >= interval:
            await self.flush()
            self._last_flush = time.monotonic()

    def _report_lag(self) -> int:
        """Set the lag gauges; return the lag summed over the assigned partitions."""
        total = 0
        for tp in self.consumer.assignment():
            end, position = self.consumer.last_stable_offset(tp), self.ingestor.position(RawPartition(*tp))
            if end is not None and position is not None:
                lag = max(0, end - position)
                self.metrics.ingest_lag.labels(str(tp.partition)).set(lag)
                total += lag
        return total

    async def flush(self) -> None:
        """Publish pending deltas and bad rows and commit their offsets in one checkpoint."""
        async with self.lock:
            if not self.ingestor.has_pending:
                return
            pending = self.ingestor.take()
            started = time.perf_counter()
            # Before the deltas are visible: the agent counts a cell's visitors when it gets them.
            await until_redis_answers(
                lambda: self.visitor_sketches.add(pending.visitors, self._visitor_ttls),
                "unique visitors",
                self.metrics.redis_up,
            )
            report = self._report(pending) if pending.has_messages else None

            async def write(checkpoint: Checkpoint) -> dict[RawPartition, CommitPoint]:
                return await checkpoint_flush(
                    checkpoint, pending, self.settings.topics, self._delta_partitions, report
                )

            points = await self.in_transaction(write)
            if points is None:
                return
            for tp, point in points.items():
                self._committed(tp, point, pending)
                await asyncio.sleep(0)  # one partition's store write at a time
            for kind, size in self.stores.memory().items():
                self.metrics.store_memory.labels(kind).set(size)
            self._count(pending, time.perf_counter() - started)

    def aborted(self, error: KafkaError) -> None:
        if isinstance(error, OutputRefused):
            self.metrics.ingest_refused.labels(error.topic).inc()
        self.metrics.ingest_aborts.inc()

    def _committed(self, tp: RawPartition, point: CommitPoint, pending: Flushable) -> None:
        """The flush committed: its state changes go to the partition's store, and journal
        records before a new snapshot are deleted (in the background: nothing waits for it)."""
        state = self.ingestor.state(tp.partition)
        if state is None:
            return
        changes = pending.journal.get(tp)
        self.stores.committed(state, point, changes)
        if changes is not None and changes.snapshot_ends and point.state_from is not None:
            log.info(
                "partition %d's state: a snapshot of %d entries from journal offset %d; deleting the "
                "records before it",
                tp.partition,
                state.checkpoint.snapshot_entries,
                point.state_from,
            )
            self.add_future(self.journal.drop_before(tp.partition, point.state_from))
        self.metrics.state_journal_records.inc(0 if changes is None else changes.sent)
        self.metrics.state_entries.labels(str(tp.partition)).set(len(state))

    def _count(self, pending: Flushable, seconds: float) -> None:
        metrics = self.metrics
        metrics.flush_seconds.observe(seconds)
        metrics.deltas_produced.inc(len(pending.deltas))
        for outcome, count in pending.outcomes.items():
            metrics.ingest_messages.labels(outcome).inc(count)
        if (warning := self.duplicate_share.observe(pending.outcomes)) is not None:
            log.warning(warning)
        for reason, count in pending.reasons.items():
            metrics.bad_rows.labels(reason).inc(count)
        for event_type, count in pending.event_types.items():
            metrics.events.labels(event_type).inc(count)
        for window, count in pending.late_windows.items():
            metrics.late_events.labels(f"{window}s").inc(count)
        for mark in pending.marks:
            if mark.watermark is not None:
                metrics.partition_watermark.labels(str(mark.raw_partition)).set(mark.watermark)

    def _report(self, pending: Flushable) -> IngestReport:
        return IngestReport(
            schema_version=INGEST_REPORT_VERSION,
            worker=self.transactional_id,
            flushed_at=datetime.now(UTC),
            next_offsets={
                str(tp.partition): point.next_offset for tp, point in sorted(pending.commits.items())
            },
            outcomes=dict(pending.outcomes),
            bad_reasons=dict(pending.reasons),
            events_by_type=dict(pending.event_types),
            late_by_window=dict(pending.late_windows),
        )
