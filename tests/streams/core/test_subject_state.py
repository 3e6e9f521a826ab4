"""Per-subject state in process: expiry, the journal's changes and snapshots, and a restore
that gives what an uninterrupted run gives."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest

from streams.contracts.journal import JournalRecord, Session
from streams.core import subject_state
from streams.core.ingestor import BatchIngestor, RawPartition
from streams.core.subject_state import PartitionState
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


def test_a_key_is_seen_once_within_its_horizon_and_forgotten_after_it() -> None:
    clock = Clock()
    state = PartitionState(clock)
    assert state.first_sighting("e:a", 60) and state.first_sighting("open:x", 600)
    assert not state.first_sighting("e:a", 60)
    clock.now += 61
    state.expire()
    assert len(state) == 1, "only the 60 s key expired"
    assert state.first_sighting("e:a", 60), "an id past the horizon counts again"
    assert not state.first_sighting("open:x", 600)


def test_sessions_live_from_their_last_write() -> None:
    clock = Clock()
    state = PartitionState(clock)
    sessions = (Session(1.0, 2.0, "direct", "(none)"),)
    state.set_sessions("s:v", sessions, 100)
    clock.now += 90
    state.set_sessions("s:v", sessions, 100)  # written again: lives 100 s from now
    clock.now += 20
    state.expire()
    assert state.sessions("s:v") == sessions
    clock.now += 81
    assert state.sessions("s:v") == (), "expired answers nothing, swept or not"
    state.expire()
    assert len(state) == 0


def test_changes_folded_into_a_new_state_answer_as_the_old_one() -> None:
    clock = Clock()
    state = PartitionState(clock)
    state.first_sighting("e:a", 60)
    state.set_sessions("s:v", (Session(1.0, 2.0, "email", "c1", "p1_x"),), 100)
    assert state.take_changes() == [
        JournalRecord(
            "1-0-0", False, [("e:a", clock.now + 60)], [("s:v", clock.now + 100, state.sessions("s:v"))]
        )
    ]
    assert state.take_changes() == [], "nothing changed since"
    state.first_sighting("e:b", 60)
    restored = PartitionState(clock)
    restored.fold(through_kafka([*state.snapshot()]))
    assert not restored.first_sighting("e:a", 60) and not restored.first_sighting("e:b", 60)
    assert restored.sessions("s:v") == state.sessions("s:v")
    clock.now += 61
    later = PartitionState(clock)
    later.fold(through_kafka(state.snapshot()))
    assert len(later) == 1, "expired entries are not restored"


def test_a_snapshot_replaces_the_changes_once_they_outgrow_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subject_state, "RECORD_BYTES", 60)  # about 4 of these keys per record
    clock = Clock()
    state = PartitionState(clock, snapshot_after_entries=10)
    journal: list[JournalRecord] = []
    snapshots = []
    for flush in range(40):
        for i in range(3):
            state.first_sighting(f"e:{flush}-{i}", 30 + flush)  # older ones expire first
        clock.now += 3
        state.expire()
        records = state.take_changes()
        if records[0].snapshot:
            snapshots.append(len(journal))
            assert all(r.snapshot for r in records) and all(len(r.sightings) <= 4 for r in records)
            assert len(records) > 1, "in parts"
        journal += records
    assert len(snapshots) >= 2, "snapshots recur as the journal grows"
    restored = PartitionState(clock)
    restored.fold(through_kafka(journal[snapshots[-1] :]))
    assert len(restored) == len(state)
    for flush in range(40):
        for i in range(3):
            assert restored.first_sighting(f"e:{flush}-{i}", 1) == state.first_sighting(f"e:{flush}-{i}", 1)


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
    old.assign(tp, 0, None, PartitionState(clock))
    journal: list[JournalRecord] = []
    for offset in range(0, 200, 50):
        count(old, old.screen([record(0, o, events[o]) for o in range(offset, offset + 50)]))
        flushed = old.take()
        journal += flushed.journal[tp]
    count(old, old.screen([record(0, o, events[o]) for o in range(200, len(events))]))
    expected = deltas_of(old)

    new = ingestor(MKPI_SITE_DOMAINS="shop.example.com")
    restored = PartitionState(clock)
    restored.fold(through_kafka(journal))
    new.assign(tp, flushed.commits[tp].next_offset, flushed.commits[tp].watermark, restored)
    count(new, new.screen([record(0, o, events[o]) for o in range(200, len(events))]))
    assert deltas_of(new) == expected
    assert expected, "the unflushed messages counted something"


def test_a_flush_of_many_changes_is_journaled_in_records_under_a_megabyte() -> None:
    state = PartitionState(Clock())
    for i in range(40_000):
        state.first_sighting(f'open:[60,1800000000,"email","{"c" * 200}"]:m{i}:p1_{"f" * 32}', 600)
        if i % 4 == 0:
            sessions = tuple(
                Session(float(n), float(n), "organic_search", "c" * 256, "p1_" + "a" * 32) for n in range(16)
            )
            state.set_sessions(f"s:p1_{i:032d}", sessions, 600)
    records = state.take_changes()
    sizes = [len(msgspec.msgpack.encode(r)) for r in records]
    assert len(records) > 1 and max(sizes) < 1024 * 1024, sizes
    assert sum(len(r.sightings) for r in records) == 40_000
    assert sum(len(r.sessions) for r in records) == 10_000
