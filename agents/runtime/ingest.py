"""Batch ingest: raw topic -> typed events -> pre-aggregated deltas, exactly once.

``streams.core.ingestor.BatchIngestor`` is the pure part: it takes raw records and
accumulates deltas, bad rows and outcome counts. ``IngestService`` is the I/O around it: it
reads the raw topic in batches with aiokafka, checks duplicates in Redis and, once per flush
interval, produces the batch's deltas and bad rows and commits the raw offsets in one Kafka
transaction, so a crash anywhere either publishes all of a batch or none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    FencedTransactionalProducer,
    membership,
    stable_committed_offsets,
)
from agents.metrics.registry import Metrics
from agents.redis.connections import redis_client
from agents.redis.dedup import RedisSightings
from agents.redis.sessions import RedisSessionStore
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
    Screened,
)
from streams.core.privacy import Pseudonymizer
from streams.core.sessions import Placement, SessionEvent, SessionStore

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
            self.service.ingestor.revoke(RawPartition(tp.topic, tp.partition))
            for gauge in (self.service.metrics.ingest_lag, self.service.metrics.partition_watermark):
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
    first_sightings: RedisSightings
    sessions: SessionStore
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
        self.transactional_id = f"{settings.topics.app_id}-ingest-{worker_name}"
        self._retry_flush_after = 0.0
        self.ingestor = BatchIngestor(settings.ingest_policy, rules, pseudonymizer)
        self.duplicate_share = DuplicateShare()
        #: Raw partitions taken over (offsets and watermarks resumed): what readiness asks.
        self.owned_partitions = 0
        self._flush_lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()
        self._delta_partitions: list[int] = []
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
        self.consumer = AIOKafkaConsumer(
            **kafka_options(settings),
            group_id=settings.topics.ingest_group_id,
            client_id=f"{settings.topics.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=settings.kafka.session_timeout_seconds * 1000,
            heartbeat_interval_ms=settings.kafka.session_timeout_seconds * 100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.producer = self._new_producer()
        self.admin = AIOKafkaAdminClient(
            **kafka_options(settings), client_id=f"{settings.topics.app_id}-ingest"
        )
        self.redis = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        self.first_sightings = RedisSightings(self.redis, settings.topics.app_id)
        self.sessions = RedisSessionStore(
            self.redis,
            settings.topics.app_id,
            settings.ingest.session_timeout_seconds,
            settings.ingest.unique_horizon_seconds,
        )
        self.visitor_sketches = VisitorSketches(self.redis, settings.topics.app_id)
        await self.admin.start()
        await self.producer.start()
        await self.consumer.start()
        self._delta_partitions = sorted(await self.producer.partitions_for(settings.topics.deltas_topic))
        self.consumer.subscribe([self.settings.topics.raw_topic], listener=_FlushBeforeRevoke(self))
        log.info("ingest reading %s as %s", self.settings.topics.raw_topic, self.transactional_id)

    def _new_producer(self) -> FencedTransactionalProducer:
        return FencedTransactionalProducer(
            **kafka_options(self.settings),
            client_id=f"{self.settings.topics.app_id}-ingest",
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1024 * 1024,
        )

    async def _renew_producer(self) -> None:
        """A fresh producer after a failed flush. A batch the broker refused has used up its
        sequence number, so every later batch to that partition would fail as out of order;
        the new producer's registration (same transactional id) starts the sequences anew, and
        waits until a transaction whose commit was under way when the flush failed has ended,
        so the committed offsets read next are settled."""
        while True:
            await self.producer.stop()
            self.producer = self._new_producer()
            try:
                await self.producer.start()
                return
            except KafkaError as exc:
                log.warning("cannot register the ingest producer yet (%r); retrying in 1 s", exc)
                await asyncio.sleep(1)

    async def on_stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self.consumer.stop()
            await self.producer.stop()
            await self.admin.close()
            await self.redis.aclose()

    async def take_over(self, assigned: list[TopicPartition]) -> None:
        """Resume assigned raw partitions from their committed offsets and watermarks."""
        async with self._flush_lock:  # no batch is counted halfway through a take-over
            await self._take_over(assigned)

    async def _take_over(self, assigned: list[TopicPartition]) -> None:
        """The offsets are read once no transaction is still committing them (the previous
        owner's last flush may be committed but not yet visible), and the consumer is moved
        there: its own lookup does not wait for that."""
        log.info("ingest assigned %s", sorted(tp.partition for tp in assigned))
        if not assigned:
            self.owned_partitions = 0
            self.metrics.ingest_partitions.set(0)
            return
        committed = await stable_committed_offsets(self.admin, self.settings.topics.ingest_group_id, assigned)
        fresh = [tp for tp in assigned if tp not in committed]
        log_starts = await self.consumer.beginning_offsets(fresh) if fresh else {}
        for tp in assigned:
            point = committed.get(tp)
            if point is None:
                start, watermark = log_starts[tp], None
            else:
                start, watermark = point.offset, CommitPoint.watermark_from_metadata(point.metadata)
            self.consumer.seek(tp, start)
            self.ingestor.assign(RawPartition(tp.topic, tp.partition), start, watermark)
        self.ingestor.raw_partitions = len(
            self.consumer.partitions_for_topic(self.settings.topics.raw_topic) or ()
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
                        screened = self.ingestor.screen(records)
                        counts = await self._check_duplicates(screened)
                        placements = await self._place_sessions(
                            self.ingestor.session_events(screened, counts)
                        )
                        self.ingestor.apply(screened, counts, placements)
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

    async def _check_duplicates(self, screened: Screened) -> list[bool]:
        """Ask Redis which events are client retries and which uniques are new."""
        sightings = self.ingestor.sightings(screened)
        return await until_redis_answers(
            lambda: self.first_sightings.counts(sightings), "the duplicate check", self.metrics.redis_up
        )

    async def _place_sessions(self, events: list[SessionEvent]) -> list[Placement]:
        """The session of each counted site event, from the session store."""
        if not events:
            return []
        return await until_redis_answers(
            lambda: self.sessions.place(events), "sessions", self.metrics.redis_up
        )

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
                    await self._publish(pending)
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

    async def _publish(self, pending: Flushable) -> None:
        """The body of a flush transaction: its deltas and marks in a few messages per delta
        partition (see ``delta_batches``), bad rows, late events, the report and the offsets."""
        settings, encode = self.settings, self._encoder.encode
        deliveries: list[tuple[str, asyncio.Future[Any]]] = []

        async def send(topic: str, value: bytes, partition: int | None = None) -> None:
            try:
                deliveries.append((topic, await self.producer.send(topic, value=value, partition=partition)))
            except KafkaError as exc:  # refused before sending (larger than max_request_size)
                raise OutputRefused(topic, exc) from exc

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
        if pending.commits:
            # Refused (and the whole transaction aborted) if this worker is no longer the
            # partitions' owner: a stalled worker cannot commit a batch another one re-reads.
            await self.producer.send_offsets_to_transaction(
                {TopicPartition(*tp): point.as_commit() for tp, point in pending.commits.items()},
                membership(self.consumer, settings.topics.ingest_group_id),
            )

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
