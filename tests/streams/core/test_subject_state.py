"""Per-subject state in front of its store: expiry, the journal's changes and snapshots, the
store written only with what committed, and a restore that gives what an uninterrupted run
gives."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest

from streams.contracts.checkpoints import CommitPoint, StoreCheckpoint
from streams.contracts.journal import JournalRecord, Session
from streams.core import subject_state
from streams.core.ingestor import BatchIngestor, RawPartition
from streams.core.subject_state import JournalChanges, PartitionState, Resume, fold_record, resume
from tests.streams.core.entries import DictStore, commit, new_state
from tests.streams.core.test_ingestor import count, ingestor, record
from tests.streams.core.test_sessions import site_event


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def through_kafka(records: Iterable[JournalRecord]) -> list[JournalRecord]:
    """The records as a restore reads them back (MessagePack, as the journal topic holds them)."""
    decoder = msgspec.msgpack.Decoder(JournalRecord)
    return [decoder.decode(msgspec.msgpack.encode(r)) for r in records]


def folded(records: Iterable[JournalRecord], clock: Clock) -> PartitionState:
    """A new state whose store holds ``records`` folded, as a restore writes them."""
    state = new_state(clock)
    store = state.store
    assert isinstance(store, DictStore)
    store.write((e for r in records for e in fold_record(r, clock())), None)
    return state


def test_a_key_is_seen_once_within_its_horizon_and_forgotten_after_it() -> None:
    clock = Clock()
    state = new_state(clock)
    assert state.first_sighting("e:a", 60) and state.first_sighting("open:x", 600)
    assert not state.first_sighting("e:a", 60)
    commit(state, CommitPoint(1, None, None, 1), state.take_changes())
    assert not state.first_sighting("e:a", 60), "the store answers once committed"
    clock.now += 61
    assert state.first_sighting("e:a", 60), "an id past the horizon counts again"
    assert not state.first_sighting("open:x", 600)
    commit(state, CommitPoint(2, None, None, 2), state.take_changes())
    assert len(state) == 2


def test_sessions_live_from_their_last_write() -> None:
    clock = Clock()
    state = new_state(clock)
    sessions = (Session(1.0, 2.0, "direct", "(none)"),)
    state.set_sessions("s:v", sessions, 100)
    clock.now += 90
    state.set_sessions("s:v", sessions, 100)  # written again: lives 100 s from now
    clock.now += 20
    assert state.sessions("s:v") == sessions
    clock.now += 81
    assert state.sessions("s:v") == (), "expired answers nothing"


def test_the_store_takes_only_what_a_committed_flush_journaled() -> None:
    clock = Clock()
    state = new_state(clock)
    state.first_sighting("e:a", 60)
    changes = state.take_changes()
    assert changes is not None and not changes.snapshot_begins
    state.first_sighting("e:b", 60)  # counted after the flush was taken: not in its commit
    store = state.store
    assert isinstance(store, DictStore)
    assert store.data == {}, "nothing reaches the store before its flush commits"
    commit(state, CommitPoint(7, None, None, 3), changes)
    assert set(store.data) == {b"se:a"}
    assert store.checkpoint == StoreCheckpoint("journal", 0, 7, None, 3, 1, 0)
    assert not state.first_sighting("e:b", 60), "the next flush's changes still answer"


def test_changes_folded_into_a_new_state_answer_as_the_old_one() -> None:
    clock = Clock()
    state = new_state(clock)
    state.first_sighting("e:a", 60)
    state.set_sessions("s:v", (Session(1.0, 2.0, "email", "c1", "p1_x"),), 100)
    changes = state.take_changes()
    assert changes is not None
    assert list(changes.records) == [
        JournalRecord(
            "1-0-0", False, [("e:a", clock.now + 60)], [("s:v", clock.now + 100, state.sessions("s:v"))]
        )
    ]
    assert state.take_changes() is None, "nothing changed since"
    restored = folded(through_kafka(changes.records), clock)
    assert not restored.first_sighting("e:a", 60)
    assert restored.sessions("s:v") == state.sessions("s:v")
    clock.now += 61
    later = folded(through_kafka(changes.records), clock)
    assert len(later) == 1, "expired entries are not restored"


class Journal:
    """The journal topic of one partition as flushes write it, and their commits."""

    def __init__(self) -> None:
        self.records: list[JournalRecord] = []
        self.state_from: int | None = None

    def flush(self, state: PartitionState, next_offset: int) -> JournalChanges | None:
        changes = state.take_changes()
        if changes is not None:
            changes.first_offset = len(self.records)
            self.records += changes.records
            if changes.snapshot_from is not None:
                self.state_from = changes.snapshot_from
        commit(state, CommitPoint(next_offset, None, self.state_from, len(self.records) or None), changes)
        return changes


def test_a_snapshot_rolls_through_the_store_a_slice_per_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subject_state, "RECORD_BYTES", 60)  # about 4 of these keys per record
    monkeypatch.setattr(subject_state, "SNAPSHOT_SLICE_ENTRIES", 7)
    clock = Clock()
    state = new_state(clock, snapshot_after_entries=10)
    journal = Journal()
    snapshots = []
    for flush in range(40):
        for i in range(3):
            state.first_sighting(f"e:{flush}-{i}", 30 + flush)  # older ones expire first
        clock.now += 3
        changes = journal.flush(state, flush + 1)
        assert changes is not None
        sliced = [r for r in changes.records if r.snapshot]
        assert sum(len(r.sightings) for r in sliced) <= 7, "a slice per flush at most"
        assert all(len(r.sightings) <= 4 for r in changes.records), "in records under RECORD_BYTES"
        assert not any(r.snapshot for r in changes.records[len(sliced) :]), "the slice before the changes"
        if changes.snapshot_ends:
            snapshots.append(journal.state_from)
    assert len(snapshots) >= 3 and snapshots == sorted(snapshots), "snapshots recur, each later"
    assert state.checkpoint.snapshot_offset == journal.state_from
    assert journal.state_from is not None
    restored = folded(through_kafka(journal.records[journal.state_from :]), clock)
    for flush in range(40):
        for i in range(3):
            key = f"e:{flush}-{i}"
            assert restored.first_sighting(key, 1) == state.first_sighting(key, 1), key


def test_a_change_to_a_key_already_sliced_is_folded_after_its_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subject_state, "SNAPSHOT_SLICE_ENTRIES", 2)
    clock = Clock()
    state = new_state(clock, snapshot_after_entries=1)
    journal = Journal()
    sessions = {n: (Session(float(n), float(n), "email", f"c{n}"),) for n in range(4)}
    for n in range(3):
        state.set_sessions(f"s:{n}", sessions[n], 600)
    journal.flush(state, 1)
    while True:  # roll, changing a subject the slices already copied at every flush
        state.set_sessions("s:0", sessions[3], 600)
        changes = journal.flush(state, 2)
        assert changes is not None
        if changes.snapshot_ends:
            break
    assert journal.state_from is not None
    restored = folded(through_kafka(journal.records[journal.state_from :]), clock)
    assert restored.sessions("s:0") == sessions[3]
    assert [restored.sessions(f"s:{n}") for n in (1, 2)] == [sessions[1], sessions[2]]


IDENTITY = StoreCheckpoint("journal", 3, layout="L")


@pytest.mark.parametrize(
    ("local", "point", "expected"),
    [
        (None, CommitPoint(10, None, 0, 5), Resume(False, 0, 5)),
        (StoreCheckpoint("journal", 3, 10, 0, 5, layout="L"), None, Resume(False, None, None)),
        (
            StoreCheckpoint("journal", 3, 10, 0, 5, layout="L"),
            CommitPoint(10, None, 0, 5),
            Resume(True, 5, 5),
        ),
        (StoreCheckpoint("journal", 3, 8, 0, 4, layout="L"), CommitPoint(10, None, 0, 5), Resume(True, 4, 5)),
        # a newer snapshot since: the records before it may be gone
        (
            StoreCheckpoint("journal", 3, 8, 0, 4, layout="L"),
            CommitPoint(20, None, 6, 9),
            Resume(False, 6, 9),
        ),
        # ahead of the committed offset (offsets reset by hand): not the committed state
        (
            StoreCheckpoint("journal", 3, 12, 0, 5, layout="L"),
            CommitPoint(10, None, 0, 5),
            Resume(False, 0, 5),
        ),
        # another journal, partition or layout
        (StoreCheckpoint("other", 3, 10, 0, 5, layout="L"), CommitPoint(10, None, 0, 5), Resume(False, 0, 5)),
        (
            StoreCheckpoint("journal", 4, 10, 0, 5, layout="L"),
            CommitPoint(10, None, 0, 5),
            Resume(False, 0, 5),
        ),
        (
            StoreCheckpoint("journal", 3, 10, 0, 5, layout="K"),
            CommitPoint(10, None, 0, 5),
            Resume(False, 0, 5),
        ),
        # nothing journaled on either side
        (StoreCheckpoint("journal", 3, 4, layout="L"), CommitPoint(10, None), Resume(True, None, None)),
        (
            StoreCheckpoint("journal", 3, 4, 0, 2, layout="L"),
            CommitPoint(10, None),
            Resume(False, None, None),
        ),
    ],
)
def test_a_store_is_kept_only_when_the_journal_after_it_brings_it_to_the_committed_point(
    local: StoreCheckpoint | None, point: CommitPoint | None, expected: Resume
) -> None:
    assert resume(local, IDENTITY, point) == expected


def journeys(seed: int) -> list[bytes]:
    """Site visits with and without session ids, email opens and clicks, and retries."""
    rng = random.Random(seed)
    events: list[bytes] = []
    for visit in range(150):
        at = rng.uniform(0, 100)
        ids: dict[str, Any] = {"anonymous_id": f"v{rng.randrange(20)}"}
        if rng.random() < 0.5:
            ids["session_id"] = f"s{visit}"
        touch = rng.choice([{}, {"utm": {"source": "facebook", "medium": "cpc", "campaign": "c1"}}])
        for step in range(rng.randint(1, 3)):
            events.append(
                site_event("page_view", at + step, f"p{visit}-{step}", **ids, **(touch if step == 0 else {}))
            )
        opens = {
            "type": "email_open",
            "schema_version": "1-0-0",
            "event_id": f"o{visit}",
            "occurred_at": json.loads(events[-1])["occurred_at"],
            "email": {"message_id": f"m{visit % 7}", "recipient": f"r{visit % 5}@example.com"},
        }
        events.append(json.dumps(opens).encode())
    events += rng.sample(events, 30)  # client retries
    rng.shuffle(events)
    return events


def deltas_of(ingest: BatchIngestor) -> dict[tuple[int, int, str, str], dict[str, int]]:
    return {
        (d.window_seconds, d.window_start, d.channel, d.campaign): d.measures for d in ingest.take().deltas
    }


def test_a_new_owner_restored_from_the_journal_counts_the_unflushed_messages_as_the_old_one_did() -> None:
    """Flush, count more, crash before the next flush: the next owner folds the journal of
    the committed flushes, reads the rest again, and publishes what the old one would have."""
    events = journeys(3)
    tp = RawPartition("raw", 0)
    clock = Clock()
    old = ingestor(MKPI_SITE_DOMAINS="shop.example.com")
    old.assign(tp, 0, None, new_state(clock))
    journal: list[JournalRecord] = []
    for offset in range(0, 200, 50):
        count(old, old.screen([record(0, o, events[o]) for o in range(offset, offset + 50)]))
        flushed = old.take()
        journal += flushed.journal[tp].records
    count(old, old.screen([record(0, o, events[o]) for o in range(200, len(events))]))
    expected = deltas_of(old)

    new = ingestor(MKPI_SITE_DOMAINS="shop.example.com")
    restored = folded(through_kafka(journal), clock)
    new.assign(tp, flushed.commits[tp].next_offset, flushed.commits[tp].watermark, restored)
    count(new, new.screen([record(0, o, events[o]) for o in range(200, len(events))]))
    assert deltas_of(new) == expected
    assert expected, "the unflushed messages counted something"


def test_a_flush_of_many_changes_is_journaled_in_records_under_a_megabyte() -> None:
    state = new_state(Clock())
    for i in range(40_000):
        state.first_sighting(f'open:[60,1800000000,"email","{"c" * 200}"]:m{i}:p1_{"f" * 32}', 600)
        if i % 4 == 0:
            sessions = tuple(
                Session(float(n), float(n), "organic_search", "c" * 256, "p1_" + "a" * 32) for n in range(16)
            )
            state.set_sessions(f"s:p1_{i:032d}", sessions, 600)
    changes = state.take_changes()
    assert changes is not None
    records = list(changes.records)
    sizes = [len(msgspec.msgpack.encode(r)) for r in records]
    assert len(records) > 1 and max(sizes) < 1024 * 1024, sizes
    assert sum(len(r.sightings) for r in records) == 40_000
    assert sum(len(r.sessions) for r in records) == 10_000
