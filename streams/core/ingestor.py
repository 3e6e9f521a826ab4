"""Batch ingest's pure part: raw records -> typed events -> pre-aggregated deltas.

``BatchIngestor`` takes raw records and accumulates deltas, bad rows and outcome counts,
deciding duplicates, distinct counts and sessions against the per-subject state of each raw
partition it owns (``streams.core.subject_state``); the service in ``agents.runtime.ingest``
does the I/O around it (Kafka reads, restoring state from the journal, one transaction per
flush).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

import msgspec

from streams.contracts.checkpoints import CommitPoint
from streams.contracts.deltas import CellKey, Delta, WatermarkMark
from streams.contracts.events import TYPE_NAMES, PageView, RawEvent
from streams.contracts.outputs import BadReason, BadRow, LateEvent
from streams.contracts.repartition import (
    MARKS_HEADER,
    RAW_PARTITION_HEADER,
    RAW_WATERMARK_HEADER,
    ForwardedMarks,
)
from streams.contracts.versions import LATE_EVENT_VERSION, WATERMARK_MARK_VERSION
from streams.core.aggregation import DeltaAggregator, published_cells
from streams.core.attribution import Attribution, ChannelRules
from streams.core.catalog import Unique, measures_of, session_scoped, uniques_of
from streams.core.privacy import Pseudonymizer
from streams.core.sessions import Placement, SessionEvent, place
from streams.core.subject_state import JournalChanges, PartitionState
from streams.core.validation import Rejection, decode_in_time, make_bad_row
from streams.core.watermarks import ForwardedWatermarks, Lateness, PartitionWatermarks
from streams.core.windows import WindowPolicy

log = logging.getLogger(__name__)

#: Names the producer of bad rows (``BadRow.processor``).
PROCESSOR = "mkpi-ingest"
NamedCell = tuple[CellKey, str, int]


class RawRecord(Protocol):
    """A record of the raw topic, as the Kafka client hands it out."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class RawPartition(NamedTuple):
    """A partition of the raw topic (equal to, and hashed like, the Kafka client's own)."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """What screening and counting need of the configuration."""

    windows: WindowPolicy
    idle_timeout_seconds: int
    max_event_bytes: int
    max_event_age_seconds: int
    max_event_future_seconds: int
    dedup_horizon_seconds: int
    blog_path_prefix: str
    #: The site's own domains: referrers from them are internal navigation.
    own_sites: tuple[str, ...]
    #: Inactivity (event time) after which a subject's next event starts a new derived session.
    session_timeout_seconds: int = 1800
    #: How long a subject's sessions are remembered after its last event was placed.
    session_ttl_seconds: int = 30 * 86400
    #: Whether ingest counts the raw topic repartitioned by subject: events are then judged
    #: by the stamps of the repartition stage, and marks go per raw partition as read on each
    #: counted partition (``streams.contracts.repartition``).
    repartitioned: bool = False


@dataclass
class Flushable:
    """Everything one flush publishes, plus the offsets (and watermarks) it commits."""

    deltas: list[Delta]
    bad_rows: list[BadRow]
    late_events: list[LateEvent]
    marks: list[WatermarkMark]
    commits: dict[RawPartition, CommitPoint]
    #: What each partition's state journals with this flush (changes, or a snapshot).
    journal: dict[RawPartition, JournalChanges] = field(default_factory=dict)
    #: Pseudonymous visitors of counted page views, per published cell (for HyperLogLogs).
    visitors: dict[CellKey, set[str]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    event_types: Counter[str] = field(default_factory=Counter)
    late_windows: Counter[str] = field(default_factory=Counter)

    @property
    def has_messages(self) -> bool:
        return bool(self.outcomes)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A valid event of a batch with what it would add, waiting for the duplicate check."""

    record: RawRecord
    event: RawEvent
    at: datetime
    #: The event's own channel and campaign (its session may give it others).
    attribution: Attribution
    #: The distinct counts it may add to (email opens and clicks).
    uniques: tuple[Unique, ...]
    #: Window sizes it is too late for (past retention by its partition's watermark).
    missed_sizes: tuple[int, ...]
    #: The watermark it was judged against: its raw partition's, just before it.
    watermark: float | None
    #: Its visitor (pseudonymized) when it is a page view, for the unique-visitor sketches.
    visitor: str | None
    #: (cell, its name in the state, horizon) of each published cell its unique opens or clicks are
    #: decided in, in the window sizes it is not too late for; empty when it has none.
    distinct_cells: tuple[NamedCell, ...]
    #: Its session, for a site event with a session id or a subject.
    session: SessionEvent | None
    #: Its raw partition, when read from the repartitioned topic with the stage's stamp.
    raw_partition: int | None = None


@dataclass(frozen=True, slots=True)
class Screened:
    """A batch after decoding and validation; nothing applied yet."""

    candidates: list[Candidate]
    rejected: list[tuple[RawRecord, Rejection]]
    next_offsets: dict[RawPartition, int]
    #: The repartition stage's marks read between the events, with the partition they came on.
    forwarded: list[tuple[int, ForwardedMarks]] = field(default_factory=list)


class BatchIngestor:
    """Pure accumulation of raw messages between two flushes.

    A batch goes through ``screen`` (decode, validate, time range: no state touched), then
    ``apply``, which decides duplicates, distinct counts and sessions against the owning
    partition's state and counts, so a flush never sees half a batch.
    """

    def __init__(
        self,
        policy: IngestPolicy,
        rules: ChannelRules,
        pseudonymizer: Pseudonymizer,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.rules = rules
        self.pseudonymize = pseudonymizer
        self.clock = clock
        self.windowing = policy.windows.windowing
        self.lateness = Lateness(policy.windows)
        self.watermarks = PartitionWatermarks(policy.idle_timeout_seconds, monotonic)
        #: Raw partitions as read on each repartitioned partition (``policy.repartitioned``).
        self.forwarded = ForwardedWatermarks()
        #: Partitions of the counted topic (all of them, not only this worker's).
        self.counted_partitions = 0
        #: Partitions of the raw topic, as the repartition stage's marks say.
        self.raw_partitions = 0
        self.aggregator = DeltaAggregator(self.windowing)
        self.bad_rows: list[BadRow] = []
        self.late_events: list[LateEvent] = []
        self._unflushed_records = False
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.event_types: Counter[str] = Counter()
        self.late_windows: Counter[str] = Counter()
        self._positions: dict[RawPartition, int] = {}
        self._states: dict[int, PartitionState] = {}
        #: (counted partition, raw partition) -> (watermark, idle) as last sent.
        self._sent_marks: dict[tuple[int, int], tuple[float | None, bool]] = {}
        #: Window size -> window start -> (channel, campaign) -> its published cells, named.
        self._named: defaultdict[int, dict[int, dict[tuple[str, str], list[NamedCell]]]] = defaultdict(dict)
        self._newest_named: dict[int, int] = {}

    def assign(self, tp: RawPartition, start: int, watermark: float | None, state: PartitionState) -> None:
        """Take over a raw partition from an offset (its committed one, or the start of its
        log), its committed watermark, and its subjects' state as of that offset."""
        self.watermarks.assign(tp.partition, watermark)
        self.forwarded.assign(tp.partition)
        self._forget_sent_marks(tp.partition)
        self._positions[tp] = start
        state.next_offset = start
        self._states[tp.partition] = state

    def unread(self, tp: RawPartition, batch: Sequence[RawRecord]) -> Sequence[RawRecord]:
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

    def state(self, partition: int) -> PartitionState | None:
        """The per-subject state of an owned partition."""
        return self._states.get(partition)

    def position(self, tp: RawPartition) -> int | None:
        """The next offset to read on a partition, once known."""
        return self._positions.get(tp)

    def revoke(self, tp: RawPartition) -> PartitionState | None:
        """Forget a partition (after the flush that precedes its revocation); its state, which
        stands at ``next_offset``, goes to the caller."""
        self.watermarks.revoke(tp.partition)
        self.forwarded.revoke(tp.partition)
        self._forget_sent_marks(tp.partition)
        self._positions.pop(tp, None)
        return self._states.pop(tp.partition, None)

    def _forget_sent_marks(self, counted_partition: int) -> None:
        for source in [s for s in self._sent_marks if s[0] == counted_partition]:
            del self._sent_marks[source]

    def _current_marks(
        self, publish: bool = False
    ) -> Iterable[tuple[tuple[int, int], tuple[float | None, bool]]]:
        """(counted partition, raw partition) -> (watermark, idle) of every source to mark:
        each owned partition itself, or, counting the repartitioned topic, each raw partition
        as read on each owned partition. ``publish``: the watermarks are being sent, and so
        become the floor of later judgements."""
        for partition in self.watermarks.partitions:
            watermark = self.watermarks.publish(partition) if publish else self.watermarks.current(partition)
            if self.policy.repartitioned:
                for raw_partition, view in self.forwarded.views(partition).items():
                    yield (partition, raw_partition), view
            else:
                yield (partition, partition), (watermark, self.watermarks.idle(partition))

    @property
    def has_pending(self) -> bool:
        """Messages to flush, or a watermark that moved (or went idle) since the last flush."""
        return self._unflushed_records or any(
            self._sent_marks.get(source) != mark for source, mark in self._current_marks()
        )

    def screen(self, records: Sequence[RawRecord]) -> Screened:
        """Decode and validate a batch, and judge each event's lateness against its partition's
        watermark as it stands just before the event: the watermark moves with every valid
        event, in partition order (duplicates included, so it does not depend on which copy
        of a retried event is counted)."""
        now = self.clock()
        candidates: list[Candidate] = []
        rejected: list[tuple[RawRecord, Rejection]] = []
        next_offsets: dict[RawPartition, int] = {}
        watermarks: dict[int, float | None] = {}
        forwarded: list[tuple[int, ForwardedMarks]] = []
        for record in records:
            next_offsets[RawPartition(record.topic, record.partition)] = record.offset + 1
            stamp = _stamp(record) if self.policy.repartitioned else None
            if stamp is not None and stamp.marks is not None:
                forwarded.append((record.partition, stamp.marks))
                continue
            if record.partition not in watermarks:
                watermarks[record.partition] = self.watermarks.current(record.partition)
            try:
                if stamp is None:
                    outcome = self._screen_one(record, now, watermarks[record.partition])
                else:
                    outcome = self._screen_one(record, now, stamp.watermark, stamp.raw_partition)
            except Exception as exc:  # a bug must cost one bad row, never the worker
                log.exception("screening failed at %s/%s", record.partition, record.offset)
                outcome = Rejection(BadReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
            if isinstance(outcome, Rejection):
                rejected.append((record, outcome))
            else:
                candidates.append(outcome)
                at, previous = outcome.at.timestamp(), watermarks[record.partition]
                watermarks[record.partition] = at if previous is None else max(previous, at)
        return Screened(candidates, rejected, next_offsets, forwarded)

    def _screen_one(
        self, record: RawRecord, now: datetime, watermark: float | None, raw_partition: int | None = None
    ) -> Candidate | Rejection:
        policy = self.policy
        in_time = decode_in_time(
            record.value or b"",
            policy.max_event_bytes,
            now,
            policy.max_event_age_seconds,
            policy.max_event_future_seconds,
        )
        if isinstance(in_time, Rejection):
            return in_time
        decoded, at = in_time
        attribution = self.rules.attribute(decoded, self.policy.own_sites)
        email = getattr(decoded, "email", None)
        uniques = uniques_of(decoded, None if email is None else self.pseudonymize(email.recipient))
        missed = self.lateness.missed_sizes(at.timestamp(), watermark)
        visitor = visitor_of(decoded) if isinstance(decoded, PageView) else None
        pseudonymous_visitor = None if visitor is None else self.pseudonymize(visitor)
        cells = self._distinct_cells(at, attribution, missed) if uniques else ()
        session = self._session_of(decoded, at, attribution)
        return Candidate(
            record,
            decoded,
            at,
            attribution,
            uniques,
            missed,
            watermark,
            pseudonymous_visitor,
            cells,
            session,
            raw_partition,
        )

    def _session_of(self, event: RawEvent, at: datetime, attribution: Attribution) -> SessionEvent | None:
        """The session a site event is placed in: the client's, else its subject's derived
        sessions; none for an event of nobody."""
        if not session_scoped(event):
            return None
        client = "" if event.session_id is None else self.pseudonymize(event.session_id)
        subject = event.user_id or event.anonymous_id
        if subject is not None:
            key = f"s:{self.pseudonymize(subject)}"
        elif client:
            key = f"c:{client}"
        else:
            return None
        return SessionEvent(key, at.timestamp(), attribution, attribution.touched, client)

    def _distinct_cells(
        self, at: datetime, attribution: Attribution, missed: tuple[int, ...]
    ) -> tuple[NamedCell, ...]:
        """The published cells a distinct count is decided in, with a name and how long
        to remember it: until no event of that window can still be accepted."""
        cells: list[NamedCell] = []
        for size, start in self.windowing.starts(at.timestamp()):
            if size not in missed:
                cells += self._named_cells(size, start, attribution.channel, attribution.campaign)
        return tuple(cells)

    def _named_cells(self, size: int, start: int, channel: str, campaign: str) -> list[NamedCell]:
        """``published_cells`` with their names and horizon; the same few come back for
        every event of a window, so they are made once per window that can still take events.
        When a newer window of a size appears, windows that ended more than grace + retention
        before it are dropped, so the cache follows the live windows instead of growing."""
        windows = self._named[size]
        series = windows.get(start)
        if series is None:
            series = windows[start] = {}
            if start > self._newest_named.get(size, start - 1):
                self._newest_named[size] = start
                expires_at = self.policy.windows.expires_at
                for old in [old for old in windows if expires_at(size, old) < start]:
                    del windows[old]
        named = series.get((channel, campaign))
        if named is None:
            named = series[(channel, campaign)] = self._name_cells(size, start, channel, campaign)
        return named

    def _name_cells(self, size: int, start: int, channel: str, campaign: str) -> list[NamedCell]:
        horizon = size + self.policy.max_event_age_seconds + self.policy.max_event_future_seconds
        return [
            (cell, cell.encode().decode(), horizon)
            for cell in published_cells(size, start, channel, campaign)
        ]

    def apply(self, screened: Screened) -> None:
        """Fold a screened batch in: each valid event is a duplicate when its partition's state
        has seen its id within the dedup horizon, and counted otherwise."""
        for partition, forwarded in screened.forwarded:
            self.watermarks.arrived(partition)
            self.raw_partitions = max(self.raw_partitions, forwarded.raw_partitions)
            for mark in forwarded.marks:
                self.forwarded.forwarded(partition, mark.raw_partition, mark.watermark, mark.idle)
        for record, rejection in screened.rejected:
            self.watermarks.arrived(record.partition)
            self._reject(rejection, record)
        dedup_horizon = self.policy.dedup_horizon_seconds
        for candidate in screened.candidates:
            partition = candidate.record.partition
            state = self._states[partition]
            self.watermarks.arrived(partition)
            self.watermarks.observed(partition, candidate.at.timestamp())
            if candidate.raw_partition is not None:
                self.forwarded.observed(
                    partition, candidate.raw_partition, candidate.watermark, candidate.at.timestamp()
                )
            if not state.first_sighting(
                "e:" + self.pseudonymize.digest(candidate.event.event_id), dedup_horizon
            ):
                self.outcomes["duplicate"] += 1
                continue
            try:
                outcome = self._count(candidate, state)
            except Exception as exc:  # a bug must cost one bad row, never the worker
                log.exception("processing failed at %s/%s", partition, candidate.record.offset)
                self._reject(
                    Rejection(BadReason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"), candidate.record
                )
                continue
            self.outcomes[outcome] += 1
            if outcome == "valid":
                self.event_types[TYPE_NAMES[type(candidate.event)]] += 1
        self._unflushed_records = True
        self._positions.update(screened.next_offsets)
        for tp, next_offset in screened.next_offsets.items():
            self._states[tp.partition].next_offset = next_offset

    def _place(self, session: SessionEvent, state: PartitionState) -> Placement:
        """The session an event belongs to, by its subject's sessions, which it may change."""
        before = state.sessions(session.key)
        placement, after = place(before, session, self.policy.session_timeout_seconds)
        if after != before:
            state.set_sessions(session.key, after, self.policy.session_ttl_seconds)
        return placement

    def _count(self, candidate: Candidate, state: PartitionState) -> str:
        """Count a candidate, in its session's channel and campaign when it has a session, in
        every window it is not too late for; ``valid``, or ``late`` when it is too late for
        all of them. Its unique opens and clicks count in the published cells that have not
        seen them."""
        placement = None if candidate.session is None else self._place(candidate.session, state)
        attribution = candidate.attribution if placement is None else placement.attribution
        missed = candidate.missed_sizes
        if missed:
            self._record_late(candidate, attribution)
        if len(missed) == len(self.windowing.sizes):
            return "late"
        at = candidate.at.timestamp()
        starts = placement is not None and placement.started
        measures = measures_of(candidate.event, attribution, self.policy.blog_path_prefix, starts)
        self.aggregator.add(at, attribution, measures, skip_sizes=missed)
        for unique in candidate.uniques:
            for cell, cell_name, horizon in candidate.distinct_cells:
                if state.first_sighting(f"{unique.namespace}:{cell_name}:{unique.key}", horizon):
                    self.aggregator.add_to_published_cell(cell, unique.measure, 1)
        if candidate.visitor is not None:
            self.aggregator.add_visitor(at, attribution, candidate.visitor, missed)
        return "valid"

    def _record_late(self, candidate: Candidate, attribution: Attribution) -> None:
        missed, watermark = candidate.missed_sizes, candidate.watermark
        assert watermark is not None, "nothing is late before its partition has a watermark"
        for size in missed:
            self.late_windows[str(size)] += 1
        self.late_events.append(
            LateEvent(
                schema_version=LATE_EVENT_VERSION,
                source_topic=candidate.record.topic,
                source_partition=candidate.record.partition,
                source_offset=candidate.record.offset,
                event_type=TYPE_NAMES[type(candidate.event)],
                event_time=candidate.at,
                watermark=datetime.fromtimestamp(watermark, UTC),
                missed_window_seconds=list(missed),
                counted_window_seconds=[s for s in self.windowing.sizes if s not in missed],
                channel=attribution.channel,
                campaign=attribution.campaign,
            )
        )

    def _reject(self, rejection: Rejection, record: RawRecord) -> None:
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
        published = dict(self._current_marks(publish=True))
        repartitioned = self.policy.repartitioned
        raw_partitions = self.raw_partitions if repartitioned else self.counted_partitions
        for (counted, raw), (watermark, idle) in published.items():
            self._sent_marks[(counted, raw)] = (watermark, idle)
            marks.append(
                WatermarkMark(
                    schema_version=WATERMARK_MARK_VERSION,
                    raw_partition=raw,
                    raw_partitions=max(raw_partitions, raw + 1),
                    counted_partition=counted if repartitioned else None,
                    counted_partitions=max(self.counted_partitions, counted + 1) if repartitioned else None,
                    watermark=watermark,
                    idle=idle,
                )
            )
        journal = {}
        for tp, position in self._positions.items():
            state = self._states[tp.partition]
            changes = state.take_changes()
            if changes is not None:
                journal[tp] = changes
            stands = state.checkpoint
            commits[tp] = CommitPoint(
                position, self.watermarks.current(tp.partition), stands.snapshot_offset, stands.journal_end
            )
        taken = Flushable(
            deltas=self.aggregator.drain(),
            bad_rows=self.bad_rows,
            late_events=self.late_events,
            marks=marks,
            commits=commits,
            journal=journal,
            outcomes=self.outcomes,
            reasons=self.reasons,
            event_types=self.event_types,
            late_windows=self.late_windows,
            visitors=self.aggregator.drain_visitors(),
        )
        self.bad_rows, self.late_events, self._unflushed_records = [], [], False
        self.outcomes, self.reasons, self.event_types = Counter(), Counter(), Counter()
        self.late_windows = Counter()
        return taken


@dataclass(frozen=True, slots=True)
class _Stamp:
    raw_partition: int | None = None
    watermark: float | None = None
    marks: ForwardedMarks | None = None


_marks_decoder = msgspec.json.Decoder(ForwardedMarks)
_NO_MARKS = ForwardedMarks(schema_version="1-0-0", raw_partitions=1, marks=[])


def _stamp(record: RawRecord) -> _Stamp | None:
    """What the repartition stage added to a record: its raw partition and that partition's
    watermark before it, or (a message that is no event) its marks, none when they cannot be
    read (logged); None for a record without a stamp (copied before stamps were added)."""
    headers = dict(record.headers)
    if MARKS_HEADER in headers:
        try:
            return _Stamp(marks=_marks_decoder.decode(record.value or b""))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(
                "unreadable repartition marks at %s/%s (%s): passed over",
                record.partition,
                record.offset,
                exc,
            )
            return _Stamp(marks=_NO_MARKS)
    raw_partition, watermark = headers.get(RAW_PARTITION_HEADER), headers.get(RAW_WATERMARK_HEADER)
    if raw_partition is None or not raw_partition.isdigit():
        return None
    try:
        stamped = float(watermark) if watermark else None
    except ValueError:
        stamped = None
    return _Stamp(raw_partition=int(raw_partition), watermark=stamped)


def visitor_of(event: RawEvent) -> str | None:
    """Whom a page view counts as: the user when known, else the anonymous (device) id."""
    return event.user_id or event.anonymous_id


class DuplicateShare:
    """Says when most of what ingest read in the last ``period_seconds`` were duplicates: a
    producer resending ids seen within the dedup horizon (a generator run again with the same
    ids, say), which would otherwise only show as KPIs that do not move."""

    def __init__(
        self, period_seconds: float = 60.0, least: int = 100, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.period_seconds = period_seconds
        self.least = least
        self.monotonic = monotonic
        self._since = monotonic()
        self._seen: Counter[str] = Counter()

    def observe(self, outcomes: Counter[str]) -> str | None:
        """Add one flush's outcomes; at the end of a period, the warning if one is due."""
        self._seen.update(outcomes)
        if self.monotonic() - self._since < self.period_seconds:
            return None
        seen, self._seen, self._since = self._seen, Counter(), self.monotonic()
        total, duplicates = sum(seen.values()), seen["duplicate"]
        if total < self.least or duplicates * 2 <= total:
            return None
        return (
            f"{duplicates} of the last {total} raw messages were duplicates of events seen within "
            "MKPI_DEDUP_HORIZON_SECONDS and were not counted: is a producer resending the same "
            "event ids (the generator keeps its ids across runs only with --repeat-ids)?"
        )
