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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, ProducerFenced
from mode import Service
from redis.exceptions import RedisError

from streams.attribution import Attribution, ChannelRules
from streams.catalog import Contribution, contribution
from streams.dedup import RedisSightings, Sighting
from streams.events import TYPE_NAMES, AwareTime, PageView, RawEvent
from streams.kpis import CellKey, Delta, DeltaAggregator, published_cells
from streams.metrics import Metrics
from streams.privacy import Pseudonymizer
from streams.settings import Settings
from streams.validation import (
    BadReason,
    BadRow,
    Rejection,
    check_time_range,
    decode_event,
    event_time,
    make_bad_row,
)

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
    event_types: Counter[str] = field(default_factory=Counter)


class IngestReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one flush did with its raw messages; published in the flush's transaction, so the
    sum over the accounting topic is exact even across crashes."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    worker: str
    flushed_at: AwareTime
    next_offsets: Annotated[
        dict[str, int], msgspec.Meta(description="Raw partition -> next offset to read after this flush.")
    ]
    outcomes: Annotated[dict[str, int], msgspec.Meta(description="valid, bad and duplicate counts.")]
    bad_reasons: dict[str, int]
    events_by_type: Annotated[dict[str, int], msgspec.Meta(description="Valid events counted, by type.")]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A valid event of a batch with what it would add, waiting for the duplicate check."""

    record: ConsumerRecord[bytes, bytes]
    event: RawEvent
    at: datetime
    attribution: Attribution
    contribution: Contribution
    #: (cell, its Redis name, horizon) of each cell its distinct counts are decided in; empty
    #: when it has no distinct counts. Computed once, at screening.
    unique_cells: tuple[tuple[CellKey, str, int], ...]


@dataclass(frozen=True, slots=True)
class Screened:
    """A batch after decoding and validation, before the duplicate check; nothing applied yet."""

    candidates: list[Candidate]
    rejected: list[tuple[ConsumerRecord[bytes, bytes], Rejection]]
    next_offsets: dict[TopicPartition, int]


class BatchIngestor:
    """Pure accumulation of raw messages between two flushes.

    A batch goes through ``screen`` (decode, validate, time range: no state touched), then
    the duplicate check (I/O, outside this class), then ``apply``, which changes all state at
    once, so a flush never sees half a batch.
    """

    def __init__(
        self,
        settings: Settings,
        rules: ChannelRules,
        pseudonymizer: Pseudonymizer,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.pseudonymize = pseudonymizer
        self.clock = clock
        self.own_sites = settings.site_domain_list
        self.windowing = settings.windowing
        self.aggregator = DeltaAggregator(self.windowing)
        self.bad_rows: list[BadRow] = []
        self.next_offsets: dict[TopicPartition, int] = {}
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.event_types: Counter[str] = Counter()

    @property
    def has_pending(self) -> bool:
        return bool(self.next_offsets)

    def screen(self, records: list[ConsumerRecord[bytes, bytes]]) -> Screened:
        now = self.clock()
        candidates: list[Candidate] = []
        rejected: list[tuple[ConsumerRecord[bytes, bytes], Rejection]] = []
        next_offsets: dict[TopicPartition, int] = {}
        for record in records:
            next_offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
            try:
                outcome = self._screen_one(record, now)
            except Exception as exc:  # a bug must cost one bad row, never the worker
                log.exception("screening failed at %s/%s", record.partition, record.offset)
                outcome = Rejection(BadReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
            if isinstance(outcome, Rejection):
                rejected.append((record, outcome))
            else:
                candidates.append(outcome)
        return Screened(candidates, rejected, next_offsets)

    def _screen_one(self, record: ConsumerRecord[bytes, bytes], now: datetime) -> Candidate | Rejection:
        decoded = decode_event(record.value or b"", self.settings.max_event_bytes)
        if isinstance(decoded, Rejection):
            return decoded
        at = event_time(decoded)
        out_of_range = check_time_range(
            at, now, self.settings.max_event_age_seconds, self.settings.max_event_future_seconds
        )
        if out_of_range is not None:
            return out_of_range
        attribution = self.rules.attribute(decoded, self.own_sites)
        person = _unique_subject(decoded)
        added = contribution(
            decoded,
            attribution,
            self.settings.blog_path_prefix,
            None if person is None else self.pseudonymize(person),
        )
        cells = self._unique_cells(at, attribution) if added.uniques else ()
        return Candidate(record, decoded, at, attribution, added, cells)

    def sightings(self, screened: Screened) -> list[Sighting]:
        """What to check in Redis: every candidate's event id, then every candidate's uniques,
        each in every published cell it counts in (``Candidate.unique_cells``)."""
        dedup = self.settings.dedup_horizon_seconds
        ids = [
            Sighting("event", self.pseudonymize(c.event.event_id), c.record.partition, c.record.offset, dedup)
            for c in screened.candidates
        ]
        uniques = [
            Sighting(f"{u.namespace}:{cell_name}", u.key, c.record.partition, c.record.offset, horizon)
            for c in screened.candidates
            for u in c.contribution.uniques
            for _, cell_name, horizon in c.unique_cells
        ]
        return ids + uniques

    def _unique_cells(self, at: datetime, attribution: Attribution) -> tuple[tuple[CellKey, str, int], ...]:
        """The published cells a distinct count is decided in, with a Redis name and how long
        to remember it: until no event of that window can still be accepted."""
        cells = []
        for size, start in self.windowing.starts(at.timestamp()):
            horizon = size + self.settings.max_event_age_seconds + self.settings.max_event_future_seconds
            for cell in published_cells(size, start, attribution.channel, attribution.campaign):
                cells.append((cell, cell.encode().decode(), horizon))
        return tuple(cells)

    def apply(self, screened: Screened, verdicts: list[bool]) -> None:
        """Fold a screened batch in; ``verdicts`` answer ``sightings(screened)`` in order."""
        for record, rejection in screened.rejected:
            self._reject(rejection, record)
        first_unique = len(screened.candidates)
        unique_verdicts = iter(verdicts[first_unique:])
        for candidate, counted in zip(screened.candidates, verdicts[:first_unique], strict=True):
            firsts = [
                (unique.measure, cell)
                for unique in candidate.contribution.uniques
                for cell, _, _ in candidate.unique_cells
                if next(unique_verdicts)
            ]
            if not counted:
                self.outcomes["duplicate"] += 1
                continue
            try:
                self._count(candidate, firsts)
            except Exception as exc:  # a bug must cost one bad row, never the worker
                log.exception(
                    "processing failed at %s/%s", candidate.record.partition, candidate.record.offset
                )
                self._reject(
                    Rejection(BadReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"), candidate.record
                )
                continue
            self.outcomes["valid"] += 1
            self.event_types[TYPE_NAMES[type(candidate.event)]] += 1
        self.next_offsets.update(screened.next_offsets)

    def _count(self, candidate: Candidate, firsts: list[tuple[str, CellKey]]) -> None:
        self.aggregator.add(candidate.at.timestamp(), candidate.attribution, candidate.contribution.measures)
        for measure, cell in firsts:
            self.aggregator.add_to_published_cell(cell, measure, 1)

    def _reject(self, rejection: Rejection, record: ConsumerRecord[bytes, bytes]) -> None:
        payload = record.value or b""
        self.bad_rows.append(
            make_bad_row(
                rejection,
                payload,
                record.topic,
                record.partition,
                record.offset,
                PROCESSOR,
                scrub=self.pseudonymize.scrub_payload,
            )
        )
        self.outcomes["bad"] += 1
        self.reasons[rejection.reason.value] += 1

    def take(self) -> Flushable:
        taken = Flushable(
            deltas=self.aggregator.drain(),
            bad_rows=self.bad_rows,
            next_offsets=self.next_offsets,
            outcomes=self.outcomes,
            reasons=self.reasons,
            event_types=self.event_types,
        )
        self.bad_rows, self.next_offsets = [], {}
        self.outcomes, self.reasons, self.event_types = Counter(), Counter(), Counter()
        return taken


def _unique_subject(event: RawEvent) -> str | None:
    """Whose uniqueness a unique measure counts: the session of a page view, the recipient of
    an email event (pseudonymized before use)."""
    if isinstance(event, PageView):
        return event.session_id
    email = getattr(event, "email", None)
    return email.recipient if email is not None else None


class _FlushBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.service.flush()
        self.service.metrics.ingest_partitions.set(0)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("ingest assigned %s", sorted(tp.partition for tp in assigned))
        self.service.metrics.ingest_partitions.set(len(assigned))


class IngestService(Service):
    """Runs inside the Faust worker; owns its own consumer and transactional producer."""

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    redis: aioredis.Redis
    first_sightings: RedisSightings

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        worker_name: str,
        rules: ChannelRules,
        pseudonymizer: Pseudonymizer,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.metrics = metrics
        self.transactional_id = f"{settings.app_id}-ingest-{worker_name}"
        self.ingestor = BatchIngestor(settings, rules, pseudonymizer)
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
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.first_sightings = RedisSightings(self.redis, settings.app_id)
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
            await self.redis.aclose()

    @Service.task
    async def _consume(self) -> None:
        interval = self.settings.flush_interval_seconds
        last_flush = time.monotonic()
        while not self.should_stop:
            batches = await self.consumer.getmany(
                timeout_ms=int(interval * 1000), max_records=self.settings.ingest_max_records
            )
            records = [record for batch in batches.values() for record in batch]
            if records:
                async with self._flush_lock:
                    screened = self.ingestor.screen(records)
                    counts = await self._check_duplicates(screened)
                    self.ingestor.apply(screened, counts)
            if time.monotonic() - last_flush >= interval:
                await self.flush()
                last_flush = time.monotonic()

    async def _check_duplicates(self, screened: Screened) -> list[bool]:
        """Ask Redis which events are client retries and which uniques are new; wait out a Redis
        outage, holding the batch."""
        sightings = self.ingestor.sightings(screened)
        delay = 0.5
        while True:
            try:
                counts = await self.first_sightings.counts(sightings)
            except (RedisError, OSError) as exc:
                self.metrics.redis_up.set(0)
                log.warning(
                    "Redis unavailable for the duplicate check (%s); ingest paused, retrying in %.1fs",
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.metrics.redis_up.set(1)
            return counts

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
                    report = self._report(pending)
                    await self.producer.send(
                        self.settings.accounting_topic, value=self._encoder.encode(report)
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
            for event_type, count in pending.event_types.items():
                self.metrics.events.labels(event_type).inc(count)

    def _report(self, pending: Flushable) -> IngestReport:
        return IngestReport(
            schema_version="1-0-0",
            worker=self.transactional_id,
            flushed_at=datetime.now(UTC),
            next_offsets={str(tp.partition): offset for tp, offset in sorted(pending.next_offsets.items())},
            outcomes=dict(pending.outcomes),
            bad_reasons=dict(pending.reasons),
            events_by_type=dict(pending.event_types),
        )

    async def _rewind(self) -> None:
        """After an aborted transaction: read the lost batch again from the committed offsets."""
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
