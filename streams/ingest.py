"""Batch ingest: raw topic -> typed events -> pre-aggregated deltas, exactly once.

``BatchIngestor`` is the pure part: it takes raw messages and accumulates deltas, bad
rows and outcome counts. ``IngestService`` is the I/O around it: it reads the raw
topic in batches with aiokafka and, once per flush interval, produces the batch's
deltas and bad rows and commits the raw offsets in one Kafka transaction, so a crash
anywhere either publishes all of a batch or none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFenced, RecordListTooLargeError
from mode import Service

from streams.attribution import Attribution, ChannelRules
from streams.catalog import Contribution, contribution
from streams.connections import kafka_options, redis_client
from streams.dedup import RedisSightings, Sighting
from streams.events import TYPE_NAMES, AwareTime, PageView, RawEvent
from streams.fencing import FENCING_ERRORS, FencedTransactionalProducer, membership, stable_committed_offsets
from streams.kpis import CellKey, Delta, DeltaAggregator, delta_batches, published_cells
from streams.metrics import Metrics
from streams.privacy import Pseudonymizer
from streams.redis_wait import until_redis_answers
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
from streams.visitors import VisitorSketches, visitor_of
from streams.watermarks import WATERMARK_SCHEMA_VERSION, Lateness, PartitionWatermarks, WatermarkMark

log = logging.getLogger(__name__)

PROCESSOR = "mkpi-ingest"
NamedCell = tuple[CellKey, str, int]


class LateEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A valid event too late for some or all of its windows: they had passed retention
    (end + grace + retention) by its raw partition's watermark. It points at the raw message
    instead of repeating it, so it carries no personal data."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    source_topic: str
    source_partition: int
    source_offset: int
    event_type: str
    event_time: Annotated[AwareTime, msgspec.Meta(description="Corrected event time.")]
    watermark: Annotated[AwareTime, msgspec.Meta(description="Its raw partition's watermark then.")]
    missed_window_seconds: Annotated[
        list[int], msgspec.Meta(description="Window sizes it was not counted in.")
    ]
    counted_window_seconds: Annotated[
        list[int], msgspec.Meta(description="Window sizes it was still counted in (empty: outcome late).")
    ]
    channel: str
    campaign: str


@dataclass(frozen=True, slots=True)
class CommitPoint:
    """Where a raw partition resumes, and the watermark its next owner starts from."""

    next_offset: int
    watermark: float | None

    def as_commit(self) -> tuple[int, str]:
        return self.next_offset, json.dumps({"watermark": self.watermark})

    @staticmethod
    def watermark_from_metadata(metadata: str) -> float | None:
        try:
            value = json.loads(metadata).get("watermark") if metadata else None
        except (ValueError, AttributeError):
            return None
        return float(value) if isinstance(value, int | float) else None


@dataclass
class Flushable:
    """Everything one flush publishes, plus the offsets (and watermarks) it commits."""

    deltas: list[Delta]
    bad_rows: list[BadRow]
    late_events: list[LateEvent]
    marks: list[WatermarkMark]
    commits: dict[TopicPartition, CommitPoint]
    #: Pseudonymous visitors of counted page views, per published cell (for HyperLogLogs).
    visitors: dict[CellKey, set[str]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    event_types: Counter[str] = field(default_factory=Counter)
    late_windows: Counter[str] = field(default_factory=Counter)

    @property
    def has_messages(self) -> bool:
        return bool(self.outcomes)


class IngestReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one flush did with its raw messages; published in the flush's transaction, so the
    sum over the accounting topic is exact even across crashes."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    worker: str
    flushed_at: AwareTime
    next_offsets: Annotated[
        dict[str, int], msgspec.Meta(description="Raw partition -> next offset to read after this flush.")
    ]
    outcomes: Annotated[
        dict[str, int],
        msgspec.Meta(description="valid, bad, duplicate and late (past retention in every window size)."),
    ]
    bad_reasons: dict[str, int]
    events_by_type: Annotated[dict[str, int], msgspec.Meta(description="Valid events counted, by type.")]
    late_by_window: Annotated[
        dict[str, int],
        msgspec.Meta(description="Window size (seconds) -> valid or late events not counted in it."),
    ] = {}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A valid event of a batch with what it would add, waiting for the duplicate check."""

    record: ConsumerRecord[bytes, bytes]
    event: RawEvent
    at: datetime
    attribution: Attribution
    contribution: Contribution
    #: Window sizes it is too late for (past retention by its partition's watermark).
    missed_sizes: tuple[int, ...]
    #: The partition's watermark it was judged against.
    watermark: float | None
    #: Its visitor (pseudonymized) when it is a page view, for the unique-visitor sketches.
    visitor: str | None
    #: (cell, its Redis name, horizon) of each published cell its distinct counts (sessions,
    #: unique opens and clicks, visitors) are decided in, in the window sizes it is not too
    #: late for; empty when it has none.
    distinct_cells: tuple[NamedCell, ...]


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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.pseudonymize = pseudonymizer
        self.clock = clock
        self.own_sites = settings.site_domain_list
        self.windowing = settings.windowing
        self.lateness = Lateness(self.windowing, settings.grace_seconds, settings.window_retention_seconds)
        self.watermarks = PartitionWatermarks(settings.idle_timeout_seconds, monotonic)
        #: Partitions of the raw topic (all of them, not only this worker's).
        self.raw_partitions = 0
        self.aggregator = DeltaAggregator(self.windowing)
        self.bad_rows: list[BadRow] = []
        self.late_events: list[LateEvent] = []
        self._unflushed_records = False
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.event_types: Counter[str] = Counter()
        self.late_windows: Counter[str] = Counter()
        self.visitors: defaultdict[CellKey, set[str]] = defaultdict(set)
        self._positions: dict[TopicPartition, int] = {}
        self._sent_marks: dict[int, tuple[float | None, bool]] = {}
        #: Window size -> window start -> (channel, campaign) -> its published cells, named.
        self._named: defaultdict[int, dict[int, dict[tuple[str, str], list[NamedCell]]]] = defaultdict(dict)
        self._newest_named: dict[int, int] = {}

    def assign(self, tp: TopicPartition, start: int, watermark: float | None) -> None:
        """Take over a raw partition from an offset (its committed one, or the start of its
        log) and its committed watermark."""
        self.watermarks.restore(tp.partition, watermark)
        self._sent_marks.pop(tp.partition, None)
        self._positions[tp] = start

    def unread(
        self, tp: TopicPartition, batch: list[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """The records of ``batch`` (one partition, in offset order) not read yet: none before
        the partition is taken over, then those from its position on. Around a take-over the
        consumer can hand out records from its own start offset, which may predate the last
        committed flush, and hands them out again after the take-over moves it."""
        position = self._positions.get(tp)
        if position is None:
            return []
        if not batch or batch[0].offset >= position:
            return batch
        return [record for record in batch if record.offset >= position]

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset to read on a partition, once known."""
        return self._positions.get(tp)

    def revoke(self, tp: TopicPartition) -> None:
        """Forget a partition (after the flush that precedes its revocation)."""
        self.watermarks.forget(tp.partition)
        self._sent_marks.pop(tp.partition, None)
        self._positions.pop(tp, None)

    def _mark(self, partition: int) -> tuple[float | None, bool]:
        return self.watermarks.current(partition), self.watermarks.idle(partition)

    @property
    def has_pending(self) -> bool:
        """Messages to flush, or a watermark that moved (or went idle) since the last flush."""
        return self._unflushed_records or any(
            self._sent_marks.get(p) != self._mark(p) for p in self.watermarks.partitions
        )

    def screen(self, records: list[ConsumerRecord[bytes, bytes]]) -> Screened:
        """Decode and validate a batch, and judge each event's lateness against its partition's
        watermark as it stands just before the event: the watermark moves with every valid
        event, in partition order (duplicates included, so it does not depend on which copy
        of a retried event is counted)."""
        now = self.clock()
        candidates: list[Candidate] = []
        rejected: list[tuple[ConsumerRecord[bytes, bytes], Rejection]] = []
        next_offsets: dict[TopicPartition, int] = {}
        watermarks: dict[int, float | None] = {}
        for record in records:
            next_offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
            if record.partition not in watermarks:
                watermarks[record.partition] = self.watermarks.current(record.partition)
            try:
                outcome = self._screen_one(record, now, watermarks[record.partition])
            except Exception as exc:  # a bug must cost one bad row, never the worker
                log.exception("screening failed at %s/%s", record.partition, record.offset)
                outcome = Rejection(BadReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
            if isinstance(outcome, Rejection):
                rejected.append((record, outcome))
            else:
                candidates.append(outcome)
                at, previous = outcome.at.timestamp(), watermarks[record.partition]
                watermarks[record.partition] = at if previous is None else max(previous, at)
        return Screened(candidates, rejected, next_offsets)

    def _screen_one(
        self, record: ConsumerRecord[bytes, bytes], now: datetime, watermark: float | None
    ) -> Candidate | Rejection:
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
        missed = self.lateness.missed_sizes(at.timestamp(), watermark)
        visitor = visitor_of(decoded) if isinstance(decoded, PageView) else None
        pseudonymous_visitor = None if visitor is None else self.pseudonymize(visitor)
        needs_cells = added.uniques or pseudonymous_visitor is not None
        cells = self._distinct_cells(at, attribution, missed) if needs_cells else ()
        return Candidate(
            record, decoded, at, attribution, added, missed, watermark, pseudonymous_visitor, cells
        )

    def sightings(self, screened: Screened) -> list[Sighting]:
        """What to check in Redis: every candidate's event id, then every candidate's uniques,
        each in every published cell it counts in (``Candidate.distinct_cells``)."""
        dedup = self.settings.dedup_horizon_seconds
        ids = [
            Sighting("event", self.pseudonymize(c.event.event_id), c.record.partition, c.record.offset, dedup)
            for c in screened.candidates
        ]
        uniques = [
            Sighting(f"{u.namespace}:{cell_name}", u.key, c.record.partition, c.record.offset, horizon)
            for c in screened.candidates
            for u in c.contribution.uniques
            for _, cell_name, horizon in c.distinct_cells
        ]
        return ids + uniques

    def _distinct_cells(
        self, at: datetime, attribution: Attribution, missed: tuple[int, ...]
    ) -> tuple[NamedCell, ...]:
        """The published cells a distinct count is decided in, with a Redis name and how long
        to remember it: until no event of that window can still be accepted."""
        cells: list[NamedCell] = []
        for size, start in self.windowing.starts(at.timestamp()):
            if size not in missed:
                cells += self._named_cells(size, start, attribution.channel, attribution.campaign)
        return tuple(cells)

    def _named_cells(self, size: int, start: int, channel: str, campaign: str) -> list[NamedCell]:
        """``published_cells`` with their Redis names and horizon; the same few come back for
        every event of a window, so they are made once per window that can still take events.
        When a newer window of a size appears, windows that ended more than grace + retention
        before it are dropped, so the cache follows the live windows instead of growing."""
        windows = self._named[size]
        series = windows.get(start)
        if series is None:
            series = windows[start] = {}
            if start > self._newest_named.get(size, start - 1):
                self._newest_named[size] = start
                after_end = self.lateness.grace_seconds + self.lateness.retention_seconds
                for old in [old for old in windows if self.windowing.end(size, old) + after_end < start]:
                    del windows[old]
        named = series.get((channel, campaign))
        if named is None:
            named = series[(channel, campaign)] = self._name_cells(size, start, channel, campaign)
        return named

    def _name_cells(self, size: int, start: int, channel: str, campaign: str) -> list[NamedCell]:
        horizon = size + self.settings.max_event_age_seconds + self.settings.max_event_future_seconds
        return [
            (cell, cell.encode().decode(), horizon)
            for cell in published_cells(size, start, channel, campaign)
        ]

    def apply(self, screened: Screened, verdicts: list[bool]) -> None:
        """Fold a screened batch in; ``verdicts`` answer ``sightings(screened)`` in order."""
        for record, rejection in screened.rejected:
            self.watermarks.arrived(record.partition)
            self._reject(rejection, record)
        first_unique = len(screened.candidates)
        unique_verdicts = iter(verdicts[first_unique:])
        for candidate, counted in zip(screened.candidates, verdicts[:first_unique], strict=True):
            firsts = [
                (unique.measure, cell)
                for unique in candidate.contribution.uniques
                for cell, _, _ in candidate.distinct_cells
                if next(unique_verdicts)
            ]
            self.watermarks.arrived(candidate.record.partition)
            self.watermarks.observed(candidate.record.partition, candidate.at.timestamp())
            if not counted:
                self.outcomes["duplicate"] += 1
                continue
            try:
                outcome = self._count(candidate, firsts)
            except Exception as exc:  # a bug must cost one bad row, never the worker
                log.exception(
                    "processing failed at %s/%s", candidate.record.partition, candidate.record.offset
                )
                self._reject(
                    Rejection(BadReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"), candidate.record
                )
                continue
            self.outcomes[outcome] += 1
            if outcome == "valid":
                self.event_types[TYPE_NAMES[type(candidate.event)]] += 1
        self._unflushed_records = True
        self._positions.update(screened.next_offsets)

    def _count(self, candidate: Candidate, firsts: list[tuple[str, CellKey]]) -> str:
        """Count a candidate in every window it is not too late for; ``valid``, or ``late``
        when it is too late for all of them."""
        missed = candidate.missed_sizes
        if missed:
            self._record_late(candidate)
        if len(missed) == len(self.windowing.sizes):
            return "late"
        at = candidate.at.timestamp()
        self.aggregator.add(at, candidate.attribution, candidate.contribution.measures, skip_sizes=missed)
        for measure, cell in firsts:
            self.aggregator.add_to_published_cell(cell, measure, 1)
        if candidate.visitor is not None:
            for cell, _, _ in candidate.distinct_cells:
                self.visitors[cell].add(candidate.visitor)
        return "valid"

    def _record_late(self, candidate: Candidate) -> None:
        missed, watermark = candidate.missed_sizes, candidate.watermark
        assert watermark is not None, "nothing is late before its partition has a watermark"
        for size in missed:
            self.late_windows[str(size)] += 1
        self.late_events.append(
            LateEvent(
                schema_version="1-0-0",
                source_topic=candidate.record.topic,
                source_partition=candidate.record.partition,
                source_offset=candidate.record.offset,
                event_type=TYPE_NAMES[type(candidate.event)],
                event_time=candidate.at,
                watermark=datetime.fromtimestamp(watermark, UTC),
                missed_window_seconds=list(missed),
                counted_window_seconds=[s for s in self.windowing.sizes if s not in missed],
                channel=candidate.attribution.channel,
                campaign=candidate.attribution.campaign,
            )
        )

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
        """Everything pending, with a mark for every owned partition and the commit point of
        each (a partition never read and never committed has nothing to commit)."""
        marks = []
        commits = {}
        for partition in self.watermarks.partitions:
            watermark = self.watermarks.publish(partition)
            idle = self.watermarks.idle(partition)
            self._sent_marks[partition] = (watermark, idle)
            marks.append(
                WatermarkMark(
                    schema_version=WATERMARK_SCHEMA_VERSION,
                    raw_partition=partition,
                    raw_partitions=max(self.raw_partitions, partition + 1),
                    watermark=watermark,
                    idle=idle,
                )
            )
        for tp, position in self._positions.items():
            commits[tp] = CommitPoint(position, self.watermarks.current(tp.partition))
        taken = Flushable(
            deltas=self.aggregator.drain(),
            bad_rows=self.bad_rows,
            late_events=self.late_events,
            marks=marks,
            commits=commits,
            outcomes=self.outcomes,
            reasons=self.reasons,
            event_types=self.event_types,
            late_windows=self.late_windows,
            visitors=dict(self.visitors),
        )
        self.bad_rows, self.late_events, self._unflushed_records = [], [], False
        self.outcomes, self.reasons, self.event_types = Counter(), Counter(), Counter()
        self.late_windows = Counter()
        self.visitors = defaultdict(set)
        return taken


def _unique_subject(event: RawEvent) -> str | None:
    """Whose uniqueness a unique measure counts: the session of a page view, the recipient of
    an email event (pseudonymized before use)."""
    if isinstance(event, PageView):
        return event.session_id
    email = getattr(event, "email", None)
    return email.recipient if email is not None else None


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
            self.service.ingestor.revoke(tp)
            for gauge in (self.service.metrics.ingest_lag, self.service.metrics.partition_watermark):
                with contextlib.suppress(KeyError):  # never set for this partition
                    gauge.remove(str(tp.partition))
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
        self.transactional_id = f"{settings.app_id}-ingest-{worker_name}"
        self._retry_flush_after = 0.0
        self.ingestor = BatchIngestor(settings, rules, pseudonymizer)
        self._flush_lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()
        self._delta_partitions: list[int] = []
        for size in settings.windowing.sizes:  # exported at 0 from the start, so rate() works
            metrics.late_events.labels(f"{size}s")
        #: A visitor sketch lives until no event can reach its window, plus a day for readers.
        self._visitor_ttls = {
            size: size + settings.grace_seconds + settings.window_retention_seconds + 86400
            for size in settings.windowing.sizes
        }

    async def on_start(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here, not in __init__.
        settings = self.settings
        self.consumer = AIOKafkaConsumer(
            **kafka_options(settings),
            group_id=settings.ingest_group_id,
            client_id=f"{settings.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=settings.kafka_session_timeout_seconds * 1000,
            heartbeat_interval_ms=settings.kafka_session_timeout_seconds * 100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.producer = self._new_producer()
        self.admin = AIOKafkaAdminClient(**kafka_options(settings), client_id=f"{settings.app_id}-ingest")
        self.redis = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        self.first_sightings = RedisSightings(self.redis, settings.app_id)
        self.visitor_sketches = VisitorSketches(self.redis, settings.app_id)
        await self.admin.start()
        await self.producer.start()
        await self.consumer.start()
        self._delta_partitions = sorted(await self.producer.partitions_for(settings.deltas_topic))
        self.consumer.subscribe([self.settings.raw_topic], listener=_FlushBeforeRevoke(self))
        log.info("ingest reading %s as %s", self.settings.raw_topic, self.transactional_id)

    def _new_producer(self) -> FencedTransactionalProducer:
        return FencedTransactionalProducer(
            **kafka_options(self.settings),
            client_id=f"{self.settings.app_id}-ingest",
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
            self.metrics.ingest_partitions.set(0)
            return
        committed = await stable_committed_offsets(self.admin, self.settings.ingest_group_id, assigned)
        fresh = [tp for tp in assigned if tp not in committed]
        log_starts = await self.consumer.beginning_offsets(fresh) if fresh else {}
        for tp in assigned:
            point = committed.get(tp)
            if point is None:
                start, watermark = log_starts[tp], None
            else:
                start, watermark = point.offset, CommitPoint.watermark_from_metadata(point.metadata)
            self.consumer.seek(tp, start)
            self.ingestor.assign(tp, start, watermark)
        self.ingestor.raw_partitions = len(self.consumer.partitions_for_topic(self.settings.raw_topic) or ())
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
                timeout_ms=int(settings.flush_interval_seconds * 1000),
                max_records=settings.ingest_max_records,
            )
            # More than a batch waits here, or deltas wait for the agent.
            behind = self._report_lag() > settings.ingest_max_records or self.agent_is_behind()
            if batches:
                async with self._flush_lock:  # positions are settled (no take-over under way)
                    records = [r for tp, batch in batches.items() for r in self.ingestor.unread(tp, batch)]
                    if records:
                        screened = self.ingestor.screen(records)
                        counts = await self._check_duplicates(screened)
                        self.ingestor.apply(screened, counts)
            interval = settings.backlog_flush_interval_seconds if behind else settings.flush_interval_seconds
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
            end, position = self.consumer.last_stable_offset(tp), self.ingestor.position(tp)
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
            await send(settings.deltas_topic, encode(batch), partition)
        for bad_row in pending.bad_rows:
            await send(settings.bad_rows_topic, encode(bad_row))
        for late in pending.late_events:
            await send(settings.late_events_topic, encode(late))
        if pending.has_messages:
            await send(settings.accounting_topic, encode(self._report(pending)))
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
                {tp: point.as_commit() for tp, point in pending.commits.items()},
                membership(self.consumer, settings.ingest_group_id),
            )

    def _report(self, pending: Flushable) -> IngestReport:
        return IngestReport(
            schema_version="1-0-0",
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
