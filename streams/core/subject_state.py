"""Per-subject state of one raw partition: what dedup, distinct counts and sessions remember.

Producers key raw events by subject (or ingest repartitions them so), so one raw partition
holds all of a subject's events and every retry of an event. The state of those subjects
lives with the partition, in the worker that owns it:

- first sightings: an event id (``e:<id>``), and each distinct-count key in each published
  cell (``<namespace>:<cell>:<key>``), remembered until their horizon;
- sessions: each subject's recent sessions (``streams.core.sessions``).

The state as of the last committed flush lives on disk (an ``EntryStore``, RocksDB in
``agents.state``); ``PartitionState`` holds only what changed since (bounded by a flush) in
front of it. ``take_changes`` hands those changes to the flush, which writes them to the journal
in the same Kafka transaction as the deltas and the raw offsets, so the journal up to a
committed offset is exactly the state at that offset; once that transaction has committed,
``committed`` writes them to the store with the checkpoint they reach (one atomic batch).

Snapshots roll: once the journal since the last snapshot has grown as large as that snapshot
(and at least ``snapshot_after_entries``), each flush also copies the next slice of the store
(``SNAPSHOT_SLICE_ENTRIES`` entries at most, in key order) to the journal, before its changes,
until the whole store is copied. The journal from the first slice on then holds every key, as
of its slice or changed after it, so folding it from there gives the state: that offset becomes
the newest snapshot's, and the records before it can go. No flush carries more than a slice,
however large the state. A new owner folds the journal from the newest snapshot; one restarting
on the same disk only what was journaled after its store's checkpoint.

Entries expire by wall clock: each records when, an expired one never answers, and the store
drops them through an index by expiry time, never by scanning the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import msgspec

from streams.contracts.checkpoints import CommitPoint, StoreCheckpoint
from streams.contracts.journal import JournalRecord, Session
from streams.contracts.versions import STATE_JOURNAL_VERSION
from streams.core.sessions import SessionState

#: Bytes of entries per journal record (estimated from their text), so that a record stays
#: well under Kafka's default 1 MB message limit.
RECORD_BYTES = 512 * 1024

#: Entries one flush copies into a rolling snapshot at most (a few records of the journal).
SNAPSHOT_SLICE_ENTRIES = 20_000

#: Store keys begin with their kind.
SIGHTING, SESSIONS = b"s", b"u"

_sessions_encoder = msgspec.msgpack.Encoder()
_sessions_decoder = msgspec.msgpack.Decoder(tuple[Session, ...])


class EntryStore(Protocol):
    """A partition's committed state on disk: key -> (expires at, value)."""

    def get(self, key: bytes) -> tuple[float, bytes] | None: ...

    def entries(self, after: bytes = b"") -> Iterator[tuple[bytes, float, bytes]]:
        """The entries with keys after ``after`` (all of them by default), in key order, expired
        or not."""
        ...

    def estimated_entries(self) -> int: ...


@dataclass
class JournalChanges:
    """What one flush journals for a partition: a slice of a rolling snapshot (if one is under
    way), then its changes."""

    records: list[JournalRecord]
    #: The changes the store takes once the flush has committed.
    entries: dict[bytes, tuple[float, bytes]]
    #: Whether this flush begins a rolling snapshot (its first record is the snapshot's), and
    #: whether it completes one.
    snapshot_begins: bool = False
    snapshot_ends: bool = False
    #: Where the snapshot under way began (before this flush), the last store key copied so
    #: far (this flush's slice included), and the entries this flush copied.
    rolling_from: int | None = None
    cursor: bytes | None = None
    sliced: int = 0
    #: Records sent and the first one's offset (set by the flush as it sends them).
    sent: int = 0
    first_offset: int | None = None

    @property
    def snapshot_from(self) -> int | None:
        """Where the snapshot this flush completes begins (None: it completes none); known once
        the flush's records are sent."""
        if not self.snapshot_ends:
            return None
        return self.first_offset if self.snapshot_begins else self.rolling_from


class PartitionState:
    """The per-subject state of one raw partition: its store, and the changes since the last
    committed flush in front of it."""

    def __init__(
        self,
        store: EntryStore,
        checkpoint: StoreCheckpoint,
        clock: Callable[[], float] = time.time,
        snapshot_after_entries: int = 50_000,
    ) -> None:
        self.store = store
        #: Where the store stands: the journal span it reflects, and the raw offset.
        self.checkpoint = checkpoint
        self.clock = clock
        #: A snapshot is due once this many entries were journaled since the last one, or as
        #: many as that one held, whichever is more.
        self.snapshot_after_entries = snapshot_after_entries
        #: Changes since the last ``take_changes``, and those taken but not committed yet.
        self._changes: dict[bytes, tuple[float, bytes]] = {}
        self._in_flight: dict[bytes, tuple[float, bytes]] = {}
        #: The raw offset the state stands at: every message before it is in it, none after.
        self.next_offset: int | None = None

    def __len__(self) -> int:
        """About how many entries the state holds (the store's estimate, plus the changes)."""
        return self.store.estimated_entries() + len(self._changes)

    def _get(self, key: bytes) -> tuple[float, bytes] | None:
        found = self._changes.get(key) or self._in_flight.get(key)
        return found if found is not None else self.store.get(key)

    def first_sighting(self, key: str, horizon_seconds: float) -> bool:
        """Whether ``key`` is new within its horizon; a new key is remembered from now on."""
        now = self.clock()
        stored_key = SIGHTING + key.encode()
        found = self._get(stored_key)
        if found is not None and found[0] > now:
            return False
        self._changes[stored_key] = (now + horizon_seconds, b"")
        return True

    def sessions(self, key: str) -> SessionState:
        """A subject's sessions; none once they expired."""
        found = self._get(SESSIONS + key.encode())
        if found is None or found[0] <= self.clock():
            return ()
        return _sessions_decoder.decode(found[1])

    def set_sessions(self, key: str, sessions: SessionState, ttl_seconds: float) -> None:
        """Store a subject's sessions, kept ``ttl_seconds`` from now (unless set again)."""
        self._changes[SESSIONS + key.encode()] = (
            self.clock() + ttl_seconds,
            _sessions_encoder.encode(sessions),
        )

    @property
    def snapshot_due(self) -> bool:
        """A rolling snapshot is under way, or due: as many entries were journaled since the last
        one as it held (and at least ``snapshot_after_entries``)."""
        checkpoint = self.checkpoint
        return checkpoint.rolling_from is not None or checkpoint.journaled_since_snapshot >= max(
            self.snapshot_after_entries, checkpoint.snapshot_entries
        )

    def take_changes(self) -> JournalChanges | None:
        """What to journal for the changes since the last call, after the next slice of the
        store when a snapshot is due; None when nothing changed."""
        if not self._changes:
            return None
        self._in_flight.update(self._changes)
        changes, self._changes = self._changes, {}
        now = self.clock()
        records = list(_records(False, _live(((k, e, v) for k, (e, v) in changes.items()), now)))
        if not self.snapshot_due:
            return JournalChanges(records, changes)
        checkpoint = self.checkpoint
        after = checkpoint.rolling_cursor or b""
        sliced = list(islice(self.store.entries(after), SNAPSHOT_SLICE_ENTRIES))
        done = len(sliced) < SNAPSHOT_SLICE_ENTRIES
        slice_records = list(_records(True, _live(sliced, now)))
        return JournalChanges(
            [*slice_records, *records],  # the slice first: a change of this flush comes after it
            changes,
            snapshot_begins=checkpoint.rolling_from is None,
            snapshot_ends=done,
            rolling_from=checkpoint.rolling_from,
            cursor=sliced[-1][0] if sliced else after,
            sliced=len(sliced),
        )

    def committed(
        self, point: CommitPoint, journal: JournalChanges | None
    ) -> dict[bytes, tuple[float, bytes]]:
        """After the flush's transaction committed at ``point``: the changes it journaled, for
        the store to write with the new ``checkpoint`` in one batch."""
        checkpoint = self.checkpoint
        changed = 0 if journal is None else len(journal.entries)
        stands = msgspec.structs.replace(
            checkpoint,
            next_offset=point.next_offset,
            snapshot_offset=point.state_from,
            journal_end=point.state_to,
            journaled_since_snapshot=checkpoint.journaled_since_snapshot + changed,
        )
        if journal is not None and journal.snapshot_ends:
            stands = msgspec.structs.replace(
                stands,
                snapshot_entries=checkpoint.rolling_entries + journal.sliced,
                journaled_since_snapshot=checkpoint.rolling_changes + changed,
                rolling_from=None,
                rolling_cursor=None,
                rolling_entries=0,
                rolling_changes=0,
            )
        elif journal is not None and (journal.snapshot_begins or checkpoint.rolling_from is not None):
            stands = msgspec.structs.replace(
                stands,
                rolling_from=journal.first_offset if journal.snapshot_begins else checkpoint.rolling_from,
                rolling_cursor=journal.cursor,
                rolling_entries=checkpoint.rolling_entries + journal.sliced,
                rolling_changes=checkpoint.rolling_changes + changed,
            )
        self.checkpoint = stands
        written, self._in_flight = self._in_flight, {}
        return written


def _live(entries: Iterable[tuple[bytes, float, bytes]], now: float) -> Iterator[tuple[bytes, float, bytes]]:
    """Entries (key, expires at, value) not expired at ``now``."""
    return ((key, expires, value) for key, expires, value in entries if expires > now)


def fold_record(record: JournalRecord, now: float) -> Iterator[tuple[bytes, float, bytes]]:
    """A journal record's entries, as the store keeps them; expired ones are left out."""
    for key, expires in record.sightings:
        if expires > now:
            yield SIGHTING + key.encode(), expires, b""
    for key, expires, sessions in record.sessions:
        if expires > now:
            yield SESSIONS + key.encode(), expires, _sessions_encoder.encode(sessions)


def _records(snapshot: bool, entries: Iterable[tuple[bytes, float, bytes]]) -> Iterator[JournalRecord]:
    """Entries as journal records of at most about ``RECORD_BYTES`` each."""
    sightings: list[tuple[str, float]] = []
    sessions: list[tuple[str, float, tuple[Session, ...]]] = []
    used = 0
    for key, expires, value in entries:
        size = len(key) + len(value) + 12
        if (sightings or sessions) and used + size > RECORD_BYTES:
            yield JournalRecord(STATE_JOURNAL_VERSION, snapshot, sightings, sessions)
            sightings, sessions, used = [], [], 0
        if key.startswith(SIGHTING):
            sightings.append((key[1:].decode(), expires))
        else:
            sessions.append((key[1:].decode(), expires, _sessions_decoder.decode(value)))
        used += size
    if sightings or sessions:
        yield JournalRecord(STATE_JOURNAL_VERSION, snapshot, sightings, sessions)


@dataclass(frozen=True, slots=True)
class Resume:
    """How a partition's store catches up with its committed point: kept, reading the journal
    from where it stands; or emptied and rebuilt from the newest snapshot. Either way the read
    ends at ``read_to`` (None: the end of the journal)."""

    keep: bool
    read_from: int | None
    read_to: int | None


def resume(local: StoreCheckpoint | None, identity: StoreCheckpoint, point: CommitPoint | None) -> Resume:
    """Whether the store standing at ``local`` can be trusted for ``point``: it follows the
    same journal partition in the same layout (``identity``), stands at or before the committed
    offset, and its journal end lies in the committed span, so that the records after it
    (appended by this worker before a crash, or by other owners while the partition was away)
    bring it to the point. Anything else is rebuilt from Kafka."""
    rebuild = Resume(
        False, None if point is None else point.state_from, None if point is None else point.state_to
    )
    if local is None or point is None:
        return rebuild
    if (local.journal_topic, local.partition, local.layout) != (
        identity.journal_topic,
        identity.partition,
        identity.layout,
    ):
        return rebuild
    if local.next_offset is None or local.next_offset > point.next_offset:
        return rebuild
    if local.journal_end is None or point.state_to is None:
        return Resume(True, None, None) if local.journal_end == point.state_to else rebuild
    if (point.state_from or 0) <= local.journal_end <= point.state_to:
        return Resume(True, local.journal_end, point.state_to)
    return rebuild
