"""Batch ingest: raw topic -> typed events -> pre-aggregated deltas, exactly once.

``BatchIngestor`` is the pure part: it takes raw messages and accumulates deltas, bad
rows and outcome counts. ``IngestService`` is the I/O around it: it reads the raw
topic in batches with aiokafka and, once per flush interval, produces the batch's
deltas and bad rows and commits the raw offsets in one Kafka transaction, so a crash
anywhere either publishes all of a batch or none of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, ProducerFenced
from mode import Service

from streams.attribution import attribute, touch_of
from streams.events import PageView
from streams.kpis import Delta, DeltaAggregator
from streams.metrics import Metrics
from streams.settings import Settings
from streams.validation import BadReason, BadRow, Rejection, decode_event, make_bad_row

log = logging.getLogger(__name__)

PROCESSOR = "mkpi-ingest"


@dataclass
class Flushable:
    """Everything one flush publishes, plus the offsets it commits."""

    deltas: list[Delta]
    bad_rows: list[BadRow]
    next_offsets: dict[TopicPartition, int]
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


class BatchIngestor:
    """Pure accumulation of raw messages between two flushes."""

    def __init__(self, settings: Settings) -> None:
        self.max_event_bytes = settings.max_event_bytes
        self.aggregator = DeltaAggregator(settings.window_seconds, settings.blog_path_prefix)
        self.bad_rows: list[BadRow] = []
        self.next_offsets: dict[TopicPartition, int] = {}
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    @property
    def has_pending(self) -> bool:
        return bool(self.next_offsets)

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        payload = record.value if record.value is not None else b""
        decoded = decode_event(payload, self.max_event_bytes)
        if isinstance(decoded, Rejection):
            self._reject(decoded, payload, record)
            return
        try:
            if isinstance(decoded, PageView):
                attribution = attribute(touch_of(decoded.utm, decoded.page.referrer))
                self.aggregator.add_page_view(decoded.occurred_at.timestamp(), attribution, decoded.page.path)
        except Exception as exc:  # a bug must cost one bad row, never the worker
            log.exception("processing failed at %s/%s@%s", record.topic, record.partition, record.offset)
            rejection = Rejection(BadReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
            self._reject(rejection, payload, record)
            return
        self.outcomes["valid"] += 1
        self._advance(record)

    def _reject(self, rejection: Rejection, payload: bytes, record: ConsumerRecord[bytes, bytes]) -> None:
        self.bad_rows.append(
            make_bad_row(rejection, payload, record.topic, record.partition, record.offset, PROCESSOR)
        )
        self.outcomes["bad"] += 1
        self.reasons[rejection.reason.value] += 1
        self._advance(record)

    def _advance(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Mark ``record`` done: its offset is committed with the next flush."""
        self.next_offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1

    def take(self) -> Flushable:
        taken = Flushable(
            deltas=self.aggregator.drain(),
            bad_rows=self.bad_rows,
            next_offsets=self.next_offsets,
            outcomes=self.outcomes,
            reasons=self.reasons,
        )
        self.bad_rows, self.next_offsets = [], {}
        self.outcomes, self.reasons = Counter(), Counter()
        return taken


class _FlushBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.flush()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("ingest assigned %s", sorted(tp.partition for tp in assigned))


class IngestService(Service):
    """Runs inside the Faust worker; owns its own consumer and transactional producer."""

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer

    def __init__(self, settings: Settings, metrics: Metrics, worker_name: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.metrics = metrics
        self.transactional_id = f"{settings.app_id}-ingest-{worker_name}"
        self.ingestor = BatchIngestor(settings)
        self._flush_lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()

    async def on_start(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here, not in __init__.
        settings = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.ingest_group_id,
            client_id=f"{settings.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"{settings.app_id}-ingest",
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1024 * 1024,
        )
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([self.settings.raw_topic], listener=_FlushBeforeRevoke(self))
        log.info("ingest reading %s as %s", self.settings.raw_topic, self.transactional_id)

    async def on_stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    @Service.task
    async def _consume(self) -> None:
        interval = self.settings.flush_interval_seconds
        last_flush = time.monotonic()
        while not self.should_stop:
            batches = await self.consumer.getmany(
                timeout_ms=int(interval * 1000), max_records=self.settings.ingest_max_records
            )
            for records in batches.values():
                for record in records:
                    self.ingestor.add(record)
            if time.monotonic() - last_flush >= interval:
                await self.flush()
                last_flush = time.monotonic()

    async def flush(self) -> None:
        """Publish pending deltas and bad rows and commit their offsets in one transaction."""
        async with self._flush_lock:
            if not self.ingestor.has_pending:
                return
            pending = self.ingestor.take()
            started = time.perf_counter()
            try:
                async with self.producer.transaction():
                    for delta in pending.deltas:
                        await self.producer.send(
                            self.settings.deltas_topic,
                            key=delta.key.encode(),
                            value=self._encoder.encode(delta),
                        )
                    for bad_row in pending.bad_rows:
                        await self.producer.send(
                            self.settings.bad_rows_topic, value=self._encoder.encode(bad_row)
                        )
                    await self.producer.send_offsets_to_transaction(
                        pending.next_offsets, self.settings.ingest_group_id
                    )
            except ProducerFenced:
                log.critical(
                    "another worker uses the transactional id %s; give each worker its own "
                    "MKPI_WORKER_NAME. Stopping ingest.",
                    self.transactional_id,
                )
                raise
            except KafkaError:
                log.exception("ingest flush failed; its input will be read again")
                self.metrics.ingest_aborts.inc()
                await self._rewind()
                return
            self.metrics.flush_seconds.observe(time.perf_counter() - started)
            self.metrics.deltas_produced.inc(len(pending.deltas))
            for outcome, count in pending.outcomes.items():
                self.metrics.ingest_messages.labels(outcome).inc(count)
            for reason, count in pending.reasons.items():
                self.metrics.bad_rows.labels(reason).inc(count)

    async def _rewind(self) -> None:
        """After an aborted transaction: read the lost batch again from the committed offsets."""
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
