"""Batch ingest: raw topic -> typed events -> pre-aggregated deltas, exactly once.

``streams.core.ingestor.BatchIngestor`` is the pure part: it takes raw records and
accumulates deltas, bad rows and outcome counts, deciding duplicates, distinct counts and
sessions against the per-subject state of the partitions it owns. ``IngestService`` is the
I/O around it: it reads the counted topic (the raw topic when producers key it by subject,
else its repartitioned copy) in batches with aiokafka, restores a partition's state from the
state journal when it takes the partition over and, once per flush interval, produces the
batch's deltas, bad rows and state changes and commits the offsets in one Kafka transaction,
so a crash anywhere either publishes all of a batch or none of it, and the state a new owner
restores is exactly the state at the committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFenced, RecordListTooLargeError
from mode import Service

from agents.kafka.connections import kafka_options
from agents.kafka.fencing import (
    FENCING_ERRORS,
    membership,
    stable_committed_offsets,
)
from agents.kafka.state_journal import StateJournal, encode_record
from agents.kafka.transactions import group_consumer, renewed_producer, transactional_producer
from agents.metrics.registry import Metrics
from agents.redis.connections import redis_client
from agents.redis.visitors import VisitorSketches
from agents.redis.waiting import until_redis_answers
from agents.settings import Settings
from streams.contracts.outputs import IngestReport
from streams.contracts.versions import INGEST_REPORT_VERSION
from streams.core.aggregation import delta_batches
from streams.core.attribution import ChannelRules
from streams.core.ingestor import (
    BatchIngestor,
    CommitPoint,
    DuplicateShare,
    Flushable,
    RawPartition,
)
from streams.core.privacy import Pseudonymizer
from streams.core.subject_state import PartitionState

log = logging.getLogger(__name__)


#: How long ingest waits to read on after a topic refused one of its messages.
REFUSED_RETRY_SECONDS = 5.0


class OutputRefused(KafkaError):  # type: ignore[misc]
    """A topic refused a message of a flush; the flush is aborted and its input read again."""

    def __init__(self, topic: str, error: Exception) -> None:
        hint = (
            " It is larger than the topic takes: raise the topic's max.message.bytes (or the "
            "broker's message.max.bytes)."
            if isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError)
            else ""
        )
        super().__init__(
            f"{topic} refused a message from ingest ({error!r}).{hint} Nothing of this flush is "
            f"committed; it is retried every {REFUSED_RETRY_SECONDS:.0f} s."
        )
        self.topic = topic


class _FlushBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.flush()
        for tp in revoked:
            self.service.park(RawPartition(tp.topic, tp.partition))
            metrics = self.service.metrics
            for gauge in (metrics.ingest_lag, metrics.partition_watermark, metrics.state_entries):
                with contextlib.suppress(KeyError):  # never set for this partition
                    gauge.remove(str(tp.partition))
        self.service.owned_partitions = 0
        self.service.metrics.ingest_partitions.set(0)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.service.take_over(assigned)


class IngestService(Service):
    """Runs inside the Faust worker; owns its own consumer and transactional producer."""

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    admin: AIOKafkaAdminClient
    redis: aioredis.Redis
    journal: StateJournal
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
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        #: Whether the KPI agent in this worker has delta messages waiting (see ``_consume``).
        self.agent_is_behind = agent_is_behind
        self.metrics = metrics
        self.client_id = f"{settings.topics.app_id}-ingest"
        self.transactional_id = f"{self.client_id}-{worker_name}"
        self._retry_flush_after = 0.0
        self.ingestor = BatchIngestor(settings.ingest_policy, rules, pseudonymizer)
        self.duplicate_share = DuplicateShare()
        #: Raw partitions taken over (offsets and watermarks resumed): what readiness asks.
        self.owned_partitions = 0
        self._flush_lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()
        self._delta_partitions: list[int] = []
        #: States of partitions revoked from this worker, each as of its committed offset:
        #: taken back without a restore if the partition comes back unchanged.
        self._parked: dict[RawPartition, PartitionState] = {}
        for size in settings.windows.windowing.sizes:  # exported at 0 from the start, so rate() works
            metrics.late_events.labels(f"{size}s")
        #: A visitor sketch lives until no event can reach its window, plus a day for readers.
        policy = settings.windows.policy
        self._visitor_ttls = {
            size: size + policy.grace_seconds + policy.retention_seconds + 86400
            for size in settings.windows.windowing.sizes
        }

    async def on_start(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here, not in __init__.
        settings = self.settings
        self.consumer = group_consumer(settings, settings.topics.ingest_group_id, self.client_id)
        self.producer = transactional_producer(settings, self.client_id, self.transactional_id)
        self.admin = AIOKafkaAdminClient(
            **kafka_options(settings), client_id=f"{settings.topics.app_id}-ingest"
        )
        self.redis = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        self.visitor_sketches = VisitorSketches(self.redis, settings.topics.app_id)
        await self.admin.start()
        self.journal = StateJournal(settings, self.admin)
        await self.journal.start()
        await self.producer.start()
        await self.consumer.start()
        self._delta_partitions = sorted(await self.producer.partitions_for(settings.topics.deltas_topic))
        self.consumer.subscribe([settings.topics.counted_topic], listener=_FlushBeforeRevoke(self))
        log.info("ingest counting %s as %s", settings.topics.counted_topic, self.transactional_id)

    async def _renew_producer(self) -> None:
        self.producer = await renewed_producer(
            self.settings, self.producer, self.client_id, self.transactional_id
        )

    async def on_stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self.consumer.stop()
            await self.journal.stop()
            await self.producer.stop()
            await self.admin.close()
            await self.redis.aclose()

    async def take_over(self, assigned: list[TopicPartition]) -> None:
        """Resume assigned raw partitions from their committed offsets and watermarks."""
        async with self._flush_lock:  # no batch is counted halfway through a take-over
            await self._take_over(assigned)

    def park(self, tp: RawPartition) -> None:
        """Keep a revoked partition's state (flushed, so as of its committed offset)."""
        state = self.ingestor.revoke(tp)
        if state is not None:
            self._parked[tp] = state

    async def _state_at(self, tp: RawPartition, point: CommitPoint | None) -> PartitionState:
        """The partition's state as of its committed offset: the parked one when it stands
        there (nobody counted on since), else restored from the journal."""
        parked = self._parked.pop(tp, None)
        start = None if point is None else point.next_offset
        if parked is not None and start is not None and parked.next_offset == start:
            return parked
        self.metrics.state_restores.inc()
        if point is None:
            return await self.journal.restore(tp.partition, None, None)
        return await self.journal.restore(tp.partition, point.state_from, point.state_to)

    async def _take_over(self, assigned: list[TopicPartition]) -> None:
        """The offsets are read once no transaction is still committing them (the previous
        owner's last flush may be committed but not yet visible), and the consumer is moved
        there: its own lookup does not wait for that. Each partition's state is that of its
        committed offset."""
        log.info("ingest assigned %s", sorted(tp.partition for tp in assigned))
        if not assigned:
            self.owned_partitions = 0
            self.metrics.ingest_partitions.set(0)
            return
        committed = await stable_committed_offsets(self.admin, self.settings.topics.ingest_group_id, assigned)
        fresh = [tp for tp in assigned if tp not in committed]
        log_starts = await self.consumer.beginning_offsets(fresh) if fresh else {}
        for tp in assigned:
            raw_tp = RawPartition(tp.topic, tp.partition)
            committed_point = committed.get(tp)
            point = None if committed_point is None else CommitPoint.from_commit(*committed_point)
            start = log_starts[tp] if point is None else point.next_offset
            state = await self._state_at(raw_tp, point)
            self.consumer.seek(tp, start)
            self.ingestor.assign(raw_tp, start, None if point is None else point.watermark, state)
        self.ingestor.raw_partitions = len(
            self.consumer.partitions_for_topic(self.settings.topics.counted_topic) or ()
        )
        self.owned_partitions = len(assigned)
        self.metrics.ingest_partitions.set(len(assigned))

    @Service.task
    async def _consume(self) -> None:
        """Read, screen and count batches; flush often while caught up (fresh KPIs), seldom
        while behind or while the KPI agent is (more events per delta, so the backlog shrinks
        faster: the agent's cost is per delta message more than per event)."""
        settings = self.settings
        last_flush = time.monotonic()
        while not self.should_stop:
            await self._wait_before_retry()
            batches = await self.consumer.getmany(
                timeout_ms=int(settings.ingest.flush_interval_seconds * 1000),
                max_records=settings.ingest.ingest_max_records,
            )
            # More than a batch waits here, or deltas wait for the agent.
            behind = self._report_lag() > settings.ingest.ingest_max_records or self.agent_is_behind()
            if batches:
                async with self._flush_lock:  # positions are settled (no take-over under way)
                    records = [
                        record
                        for tp, batch in batches.items()
                        for record in self.ingestor.unread(RawPartition(*tp), batch)
                    ]
                    if records:
                        self.ingestor.apply(self.ingestor.screen(records))
            interval = (
                settings.ingest.backlog_flush_interval_seconds
                if behind
                else settings.ingest.flush_interval_seconds
            )
            if time.monotonic() - last_flush >= interval:
                await self.flush()
                last_flush = time.monotonic()

    async def _wait_before_retry(self) -> None:
        """After a refused flush, read on only after a pause (its cause, such as a topic's
        message size limit, needs an operator): the log gets one error per retry, not thousands."""
        pause = self._retry_flush_after - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)

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
        """Publish pending deltas and bad rows and commit their offsets in one transaction."""
        async with self._flush_lock:
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
            try:
                async with self.producer.transaction():
                    commits = await self._publish(pending)
            except ProducerFenced:
                log.critical(
                    "another worker uses the transactional id %s; give each worker its own "
                    "MKPI_WORKER_NAME. Stopping ingest.",
                    self.transactional_id,
                )
                raise
            except OutputRefused as exc:
                log.error("%s", exc)
                self.metrics.ingest_refused.labels(exc.topic).inc()
                self.metrics.ingest_aborts.inc()
                await self._renew_producer()
                await self._rewind()
                self._retry_flush_after = time.monotonic() + REFUSED_RETRY_SECONDS
                return
            except FENCING_ERRORS as exc:
                log.warning("ingest batch aborted, its partitions moved to another worker: %s", exc)
                self.metrics.ingest_aborts.inc()
                await self._rewind()
                return
            except KafkaError:
                log.exception("ingest flush failed; its input will be read again")
                self.metrics.ingest_aborts.inc()
                await self._renew_producer()
                await self._rewind()
                return
            for tp, point in commits.items():
                self._journaled(tp, point, pending)
            self.metrics.flush_seconds.observe(time.perf_counter() - started)
            self.metrics.deltas_produced.inc(len(pending.deltas))
            for outcome, count in pending.outcomes.items():
                self.metrics.ingest_messages.labels(outcome).inc(count)
            if (warning := self.duplicate_share.observe(pending.outcomes)) is not None:
                log.warning(warning)
            for reason, count in pending.reasons.items():
                self.metrics.bad_rows.labels(reason).inc(count)
            for event_type, count in pending.event_types.items():
                self.metrics.events.labels(event_type).inc(count)
            for window, count in pending.late_windows.items():
                self.metrics.late_events.labels(f"{window}s").inc(count)
            for mark in pending.marks:
                if mark.watermark is not None:
                    self.metrics.partition_watermark.labels(str(mark.raw_partition)).set(mark.watermark)

    def _journaled(self, tp: RawPartition, point: CommitPoint, pending: Flushable) -> None:
        """After a flush's commit: where the partition's state journal now stands; records
        before a new snapshot are deleted (in the background: nothing waits for it)."""
        state = self.ingestor.state(tp.partition)
        if state is None:
            return
        snapshot_taken = point.state_from is not None and point.state_from != state.snapshot_offset
        state.snapshot_offset, state.journal_end = point.state_from, point.state_to
        if snapshot_taken and point.state_from is not None:
            log.info(
                "partition %d's state: a snapshot of %d entries at journal offset %d; deleting the "
                "records before it",
                tp.partition,
                state.last_snapshot_entries,
                point.state_from,
            )
            self.add_future(self.journal.drop_before(tp.partition, point.state_from))
        self.metrics.state_journal_records.inc(len(pending.journal.get(tp, ())))
        self.metrics.state_entries.labels(str(tp.partition)).set(len(state))

    async def _publish(self, pending: Flushable) -> dict[RawPartition, CommitPoint]:
        """The body of a flush transaction: its deltas and marks in a few messages per delta
        partition (see ``delta_batches``), bad rows, late events, the report, the state
        journal's records and the offsets; returns the commit points as committed (with where
        each partition's journal now stands)."""
        settings, encode = self.settings, self._encoder.encode
        deliveries: list[tuple[str, asyncio.Future[Any]]] = []

        async def send(topic: str, value: bytes, partition: int | None = None) -> asyncio.Future[Any]:
            try:
                delivery: asyncio.Future[Any] = await self.producer.send(
                    topic, value=value, partition=partition
                )
            except KafkaError as exc:  # refused before sending (larger than max_request_size)
                raise OutputRefused(topic, exc) from exc
            deliveries.append((topic, delivery))
            return delivery

        journal: dict[RawPartition, list[asyncio.Future[Any]]] = {}
        for tp, records in pending.journal.items():
            journal[tp] = [
                await send(settings.topics.state_journal_topic, encode_record(r), tp.partition)
                for r in records
            ]

        for partition, batch in delta_batches(pending.deltas, pending.marks, len(self._delta_partitions)):
            await send(settings.topics.deltas_topic, encode(batch), partition)
        for bad_row in pending.bad_rows:
            await send(settings.topics.bad_rows_topic, encode(bad_row))
        for late in pending.late_events:
            await send(settings.topics.late_events_topic, encode(late))
        if pending.has_messages:
            await send(settings.topics.accounting_topic, encode(self._report(pending)))
        # Every message must be written before the offsets are committed with them: aiokafka
        # commits a transaction even when one of its sends failed.
        outcomes = await asyncio.gather(*(delivery for _, delivery in deliveries), return_exceptions=True)
        for (topic, _), outcome in zip(deliveries, outcomes, strict=True):
            if isinstance(outcome, KafkaError):
                raise OutputRefused(topic, outcome) from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        commits = dict(pending.commits)
        for tp, sent in journal.items():
            if sent:
                point = commits[tp]
                first_record = pending.journal[tp][0]
                state_from = sent[0].result().offset if first_record.snapshot else point.state_from
                commits[tp] = dataclasses.replace(
                    point, state_from=state_from, state_to=sent[-1].result().offset + 1
                )
        if commits:
            # Refused (and the whole transaction aborted) if this worker is no longer the
            # partitions' owner: a stalled worker cannot commit a batch another one re-reads.
            await self.producer.send_offsets_to_transaction(
                {TopicPartition(*tp): point.as_commit() for tp, point in commits.items()},
                membership(self.consumer, settings.topics.ingest_group_id),
            )
        return commits

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

    async def _rewind(self) -> None:
        """After an aborted transaction: read the lost batch again from the committed offsets,
        with the watermarks committed with them."""
        await self._take_over(list(self.consumer.assignment()))
