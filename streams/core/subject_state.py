"""Per-subject state of one raw partition, in process: what dedup, distinct counts and sessions
remember.

Producers key raw events by subject (or ingest repartitions them so), so one raw partition
holds all of a subject's events and every retry of an event. The state of those subjects
lives with the partition, in the worker that owns it:

- first sightings: an event id (``e:<id>``), and each distinct-count key in each published
  cell (``<namespace>:<cell>:<key>``), remembered until their horizon;
- sessions: each subject's recent sessions (``streams.core.sessions``).

Everything the state learns is also kept as changes, which ``take_changes`` hands to the
flush: it writes them to the journal in the same Kafka transaction as the deltas and the raw
offsets, so the journal up to a committed offset is exactly the state at that offset. When the
journal since the last snapshot has grown as large as that snapshot (and at least
``snapshot_after_entries``), the flush writes a snapshot instead, and a new owner folds the
journal from it (``fold``): restoring reads about twice the state at most.

Entries expire by wall clock, as they did in Redis: each records when; expired ones are
forgotten lazily (``expire``, in order of writing per horizon) and never answer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

from streams.contracts.journal import JournalRecord
from streams.contracts.versions import STATE_JOURNAL_VERSION
from streams.core.sessions import SessionState

#: Bytes of entries per journal record (estimated from their text), so that a record stays
#: well under Kafka's default 1 MB message limit.
RECORD_BYTES = 512 * 1024


class PartitionState:
    """The per-subject state of one raw partition, and its changes since the last flush."""

    def __init__(self, clock: Callable[[], float] = time.time, snapshot_after_entries: int = 50_000) -> None:
        self.clock = clock
        #: A snapshot is due once this many entries were journaled since the last one, or as
        #: many as that one held, whichever is more.
        self.snapshot_after_entries = snapshot_after_entries
        self.last_snapshot_entries = 0
        self._sightings: dict[str, float] = {}
        self._sessions: dict[str, tuple[float, SessionState]] = {}
        #: (expires at, key) in order of writing, one queue per horizon (so each is sorted).
        self._sighting_queues: dict[float, deque[tuple[float, str]]] = {}
        self._session_queue: deque[tuple[float, str]] = deque()
        self._new_sightings: list[tuple[str, float]] = []
        self._changed_sessions: set[str] = set()
        #: Entries journaled since the newest snapshot (restoring reads that many, plus it).
        self.journaled_since_snapshot = 0
        #: Journal offsets: the newest snapshot's first record (None before the first), and
        #: the end of the last committed flush's records (None before any).
        self.snapshot_offset: int | None = None
        self.journal_end: int | None = None
        #: The raw offset the state stands at: every message before it is in it, none after.
        self.next_offset: int | None = None

    def __len__(self) -> int:
        return len(self._sightings) + len(self._sessions)

    def first_sighting(self, key: str, horizon_seconds: float) -> bool:
        """Whether ``key`` is new within its horizon; a new key is remembered from now on."""
        now = self.clock()
        expires = self._sightings.get(key)
        if expires is not None and expires > now:
            return False
        expires = now + horizon_seconds
        self._sightings[key] = expires
        self._sighting_queues.setdefault(horizon_seconds, deque()).append((expires, key))
        self._new_sightings.append((key, expires))
        return True

    def sessions(self, key: str) -> SessionState:
        """A subject's sessions; none once they expired."""
        stored = self._sessions.get(key)
        if stored is None or stored[0] <= self.clock():
            return ()
        return stored[1]

    def set_sessions(self, key: str, sessions: SessionState, ttl_seconds: float) -> None:
        """Store a subject's sessions, kept ``ttl_seconds`` from now (unless set again)."""
        expires = self.clock() + ttl_seconds
        self._sessions[key] = (expires, sessions)
        self._session_queue.append((expires, key))
        self._changed_sessions.add(key)

    def expire(self) -> None:
        """Forget what has expired."""
        now = self.clock()
        for queue in self._sighting_queues.values():
            while queue and queue[0][0] <= now:
                expires, key = queue.popleft()
                if self._sightings.get(key) == expires:
                    del self._sightings[key]
        queue = self._session_queue
        while queue and queue[0][0] <= now:
            expires, key = queue.popleft()
            stored = self._sessions.get(key)
            if stored is not None and stored[0] == expires:
                del self._sessions[key]

    @property
    def snapshot_due(self) -> bool:
        return self.journaled_since_snapshot >= max(self.snapshot_after_entries, self.last_snapshot_entries)

    def take_changes(self) -> list[JournalRecord]:
        """What to journal for the changes since the last call: one record of them, a
        snapshot when one is due, or nothing when nothing changed."""
        if not self._new_sightings and not self._changed_sessions:
            return []
        if self.snapshot_due:
            self._new_sightings, self._changed_sessions = [], set()
            return self.snapshot()
        sessions = [(key, *self._sessions[key]) for key in self._changed_sessions]
        records = _records(False, self._new_sightings, sessions)
        self.journaled_since_snapshot += len(self._new_sightings) + len(sessions)
        self._new_sightings, self._changed_sessions = [], set()
        return records

    def snapshot(self) -> list[JournalRecord]:
        """The whole live state, in records of at most ``RECORD_BYTES`` (at least one, so an
        empty state is a snapshot too)."""
        self.expire()
        self.journaled_since_snapshot = 0
        self.last_snapshot_entries = len(self)
        sessions = [(key, *stored) for key, stored in self._sessions.items()]
        return _records(True, list(self._sightings.items()), sessions) or [
            JournalRecord(STATE_JOURNAL_VERSION, True, [], [])
        ]

    def fold(self, records: Iterator[JournalRecord] | list[JournalRecord]) -> None:
        """Replay journal records, in order, into this (fresh) state; expired entries are skipped."""
        now = self.clock()
        for record in records:
            for key, expires in record.sightings:
                if expires > now:
                    self._sightings[key] = expires
                    self._sighting_queues.setdefault(0.0, deque()).append((expires, key))
            for key, expires, sessions in record.sessions:
                if expires > now:
                    self._sessions[key] = (expires, sessions)
                    self._session_queue.append((expires, key))
            entries = len(record.sightings) + len(record.sessions)
            if record.snapshot:
                self.last_snapshot_entries += entries
            else:
                self.journaled_since_snapshot += entries
        for queue in (*self._sighting_queues.values(), self._session_queue):
            ordered = sorted(queue)
            queue.clear()
            queue.extend(ordered)


SessionEntry = tuple[str, float, SessionState]


def _records(
    snapshot: bool, sightings: list[tuple[str, float]], sessions: list[SessionEntry]
) -> list[JournalRecord]:
    """Entries split into records of at most about ``RECORD_BYTES`` each."""
    records = []
    budget = RECORD_BYTES
    chunk: list[tuple[str, float]] = []
    used = 0
    for entry in sightings:
        size = len(entry[0]) + 12
        if chunk and used + size > budget:
            records.append(JournalRecord(STATE_JOURNAL_VERSION, snapshot, chunk, []))
            chunk, used = [], 0
        chunk.append(entry)
        used += size
    session_chunk: list[SessionEntry] = []
    for session_entry in sessions:
        size = (
            len(session_entry[0])
            + 12
            + sum(len(s.channel) + len(s.campaign) + len(s.client) + 30 for s in session_entry[2])
        )
        if (chunk or session_chunk) and used + size > budget:
            records.append(JournalRecord(STATE_JOURNAL_VERSION, snapshot, chunk, session_chunk))
            chunk, session_chunk, used = [], [], 0
        session_chunk.append(session_entry)
        used += size
    if chunk or session_chunk:
        records.append(JournalRecord(STATE_JOURNAL_VERSION, snapshot, chunk, session_chunk))
    return records
