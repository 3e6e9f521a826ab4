"""BatchIngestor: the pure part of ingest, fed with consumer records built by hand."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiokafka import ConsumerRecord, TopicPartition

from agents.settings import Settings
from streams.contracts.deltas import ALL, CellKey
from streams.contracts.repartition import (
    MARKS_HEADER,
    RAW_PARTITION_HEADER,
    RAW_WATERMARK_HEADER,
    ForwardedMark,
    ForwardedMarks,
)
from streams.core.attribution import ChannelRules
from streams.core.ingestor import BatchIngestor, DuplicateShare, RawPartition, Screened
from streams.core.privacy import Pseudonymizer
from tests.streams.core.entries import new_state

NOW = datetime(2026, 11, 27, 10, 0, 40, tzinfo=UTC)


def record(
    partition: int, offset: int, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="raw",
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value or b""),
        headers=headers,
    )


def copied(
    partition: int, offset: int, value: bytes, raw_partition: int, stamp: float | None
) -> ConsumerRecord[bytes, bytes]:
    """A raw message as the repartition stage copies it, stamped with its raw partition's watermark."""
    headers = (
        (RAW_PARTITION_HEADER, str(raw_partition).encode()),
        (RAW_WATERMARK_HEADER, b"" if stamp is None else repr(stamp).encode()),
    )
    return record(partition, offset, value, headers)


def stage_marks(partition: int, offset: int, marks: dict[int, float]) -> ConsumerRecord[bytes, bytes]:
    body = ForwardedMarks(
        schema_version="1-0-0",
        raw_partitions=2,
        marks=[ForwardedMark(raw_partition=p, watermark=w, idle=False) for p, w in marks.items()],
    )
    return record(partition, offset, msgspec.json.encode(body), ((MARKS_HEADER, b"1"),))


def page_view(event_id: str, medium: str, **extra: Any) -> bytes:
    event = {
        "type": "page_view",
        "schema_version": "1-0-0",
        "event_id": event_id,
        "occurred_at": "2026-11-27T10:00:30Z",
        "utm": {"source": "google", "medium": medium, "campaign": "c1"},
        "page": {"path": "/"},
        **extra,
    }
    return json.dumps(event).encode()


def ingestor(**settings: str) -> BatchIngestor:
    """Counting a raw topic keyed by subject, unless ``settings`` say otherwise."""
    config = Settings.from_env(
        {"MKPI_PSEUDONYMIZATION_KEY": "k" * 32, "MKPI_RAW_KEYED_BY_SUBJECT": "true", **settings}
    )
    return BatchIngestor(
        config.ingest_policy, ChannelRules.load(), Pseudonymizer("k" * 32), clock=lambda: NOW
    )


def count(ingest: BatchIngestor, screened: Screened) -> None:
    """Apply a screened batch as the service does; a partition seen for the first time is
    taken over from offset 0 with an empty state."""
    for tp in screened.next_offsets:
        if ingest.state(tp.partition) is None:
            ingest.assign(tp, 0, None, new_state())
    ingest.apply(screened)


def test_every_message_ends_valid_bad_or_duplicate_and_offsets_advance_per_partition() -> None:
    ingest = ingestor()
    screened = ingest.screen(
        [
            record(0, 5, page_view("a", "organic")),
            record(0, 6, b"{broken"),
            record(1, 9, None),
            record(1, 10, page_view("b", "cpc")),
            record(1, 11, page_view("b", "organic")),  # a retry of b: its subject's partition
        ]
    )
    assert not ingest.has_pending, "screening must not change state"
    count(ingest, screened)
    taken = ingest.take()
    assert taken.outcomes == {"valid": 2, "bad": 2, "duplicate": 1}
    assert taken.reasons == {"not_json": 2}
    assert taken.event_types == {"page_view": 2}
    occurred = datetime(2026, 11, 27, 10, 0, 30, tzinfo=UTC).timestamp()
    assert {tp: (c.next_offset, c.watermark) for tp, c in taken.commits.items()} == {
        TopicPartition("raw", 0): (7, occurred),
        TopicPartition("raw", 1): (12, occurred),
    }
    assert [(m.raw_partition, m.watermark, m.idle) for m in taken.marks] == [
        (0, occurred, False),
        (1, occurred, False),
    ]
    assert [(row.source_partition, row.source_offset) for row in taken.bad_rows] == [(0, 6), (1, 9)]
    minute = {(d.channel, d.campaign): d.measures for d in taken.deltas if d.window_seconds == 60}
    assert minute[(ALL, "c1")] == {"page_views": 2, "organic_page_views": 1}
    assert minute[("paid_search", ALL)] == {"page_views": 1}, "the first copy counts"
    assert {d.window_seconds for d in taken.deltas} == {60, 3600, 86400}
    assert not ingest.has_pending
    empty = ingest.take()
    assert (empty.deltas, empty.bad_rows, empty.outcomes) == ([], [], {})


def test_an_event_id_counts_once_per_partition_state_until_its_horizon() -> None:
    """Dedup is the owning partition's memory: a retry is a duplicate there, and an id is
    forgotten after MKPI_DEDUP_HORIZON_SECONDS (the same id on another partition's state is
    another subject's, which a producer keying by subject never sends)."""
    now = [1_000.0]
    ingest = ingestor(MKPI_DEDUP_HORIZON_SECONDS="60")
    state = new_state(clock=lambda: now[0])
    ingest.assign(RawPartition("raw", 0), 0, None, state)
    for offset, advance in ((1, 0.0), (2, 59.0), (3, 2.0)):
        now[0] += advance
        count(ingest, ingest.screen([record(0, offset, page_view("a", "organic"))]))
    assert ingest.take().outcomes == {"valid": 2, "duplicate": 1}
    count(ingest, ingest.screen([record(1, 1, page_view("a", "organic"))]))
    assert ingest.take().outcomes == {"valid": 1}
    assert state.next_offset == 4


def test_events_outside_the_time_range_are_bad_rows() -> None:
    ingest = ingestor(MKPI_MAX_EVENT_AGE_SECONDS="3600", MKPI_MAX_EVENT_FUTURE_SECONDS="60")
    screened = ingest.screen(
        [
            record(0, 1, page_view("old", "organic", occurred_at="2026-11-27T08:59:00Z")),
            record(0, 2, page_view("future", "organic", occurred_at="2026-11-27T10:02:00Z")),
            record(0, 3, page_view("fine", "organic", occurred_at="2026-11-27T09:01:00Z")),
        ]
    )
    assert [c.event.event_id for c in screened.candidates] == ["fine"]
    assert [(r.offset, j.reason.value) for r, j in screened.rejected] == [
        (1, "timestamp_out_of_range"),
        (2, "timestamp_out_of_range"),
    ]


def test_client_clock_skew_is_corrected_before_windowing() -> None:
    ingest = ingestor()
    skewed = page_view(
        "skew",
        "organic",
        occurred_at="2026-11-27T12:00:10Z",  # the phone's clock is 2 hours ahead...
        sent_at="2026-11-27T12:00:20Z",
        received_at="2026-11-27T10:00:21Z",  # ...as the collector's clock shows
    )
    [candidate] = ingest.screen([record(0, 1, skewed)]).candidates
    assert candidate.at == datetime(2026, 11, 27, 10, 0, 11, tzinfo=UTC)


def test_bad_rows_keep_no_identifier_in_clear() -> None:
    ingest = ingestor()
    broken = (
        b'{"type":"page_view","user_id":"u-12345","anonymous_id":"anon-999","note":"mail me: jo@example.org"'
    )
    count(ingest, ingest.screen([record(0, 1, broken)]))
    [row] = ingest.take().bad_rows
    for secret in ("u-12345", "anon-999", "jo@example.org"):
        assert secret not in row.payload
    pseudonymize = Pseudonymizer("k" * 32)
    assert pseudonymize("u-12345") in row.payload and pseudonymize("jo@example.org") in row.payload


def test_sessions_count_once_when_placed_and_unique_opens_on_a_first_sighting() -> None:
    ingest = ingestor()
    view = page_view("v1", "organic", session_id="s-1")
    opens = [
        json.dumps(
            {
                "type": "email_open",
                "schema_version": "1-0-0",
                "event_id": f"o{i}",
                "occurred_at": "2026-11-27T10:00:30Z",
                "email": {"message_id": "m1", "recipient": "reader@example.com"},
                "machine_open": machine,
            }
        ).encode()
        for i, machine in ((1, False), (2, False), (3, True))
    ]
    screened = ingest.screen([record(0, 1, view), *(record(0, 2 + i, o) for i, o in enumerate(opens))])
    session = screened.candidates[0].session
    assert session is not None and session.key.startswith("c:") and "s-1" not in session.key
    count(ingest, screened)
    state = ingest.state(0)
    assert state is not None
    taken = state.take_changes()
    assert taken is not None
    [changes] = taken.records
    # Unique opens are decided per published cell: 3 window sizes x 4 grains = 12 cells each,
    # remembered once (the second open finds them), next to the 4 event ids.
    keys = [key for key, _ in changes.sightings]
    assert [k.split(":")[0] for k in keys] == ["e"] * 2 + ["open"] * 12 + ["e"] * 2
    assert "reader@example.com" not in repr(changes) and "s-1" not in repr(changes)
    assert [key for key, _, _ in changes.sessions] == [session.key]
    minute = {(d.channel, d.campaign): d.measures for d in ingest.take().deltas if d.window_seconds == 60}
    assert minute[(ALL, ALL)] == {
        "page_views": 1,
        "organic_page_views": 1,
        "sessions": 1,
        "organic_sessions": 1,
        "email_opens": 2,
        "email_unique_opens": 1,
        "email_machine_opens": 1,
    }


def test_events_past_retention_are_counted_only_in_windows_still_open_or_reported_late() -> None:
    ingest = ingestor(MKPI_WINDOW_SIZES="60,3600", MKPI_GRACE_SECONDS="0", MKPI_WINDOW_RETENTION_SECONDS="60")
    ahead = page_view("ahead", "organic").replace(b"10:00:30", b"10:05:00")
    screened = ingest.screen([record(0, 1, ahead), record(0, 2, page_view("behind", "organic"))])
    count(ingest, screened)
    taken = ingest.take()
    assert taken.outcomes == {"valid": 2}
    assert taken.late_windows == {"60": 1}
    [late] = taken.late_events
    assert (late.source_partition, late.source_offset, late.event_type) == (0, 2, "page_view")
    assert (late.missed_window_seconds, late.counted_window_seconds) == ([60], [3600])
    assert late.watermark == datetime(2026, 11, 27, 10, 5, tzinfo=UTC)
    minute_starts = {d.window_start for d in taken.deltas if d.window_seconds == 60}
    hour = {(d.channel, d.campaign): d.measures for d in taken.deltas if d.window_seconds == 3600}
    assert minute_starts == {int(datetime(2026, 11, 27, 10, 5, tzinfo=UTC).timestamp())}
    assert hour[(ALL, ALL)]["page_views"] == 2

    only_minutes = ingestor(
        MKPI_WINDOW_SIZES="60", MKPI_GRACE_SECONDS="0", MKPI_WINDOW_RETENTION_SECONDS="60"
    )
    screened = only_minutes.screen([record(3, 1, ahead), record(3, 2, page_view("behind", "organic"))])
    count(only_minutes, screened)
    taken = only_minutes.take()
    assert taken.outcomes == {"valid": 1, "late": 1}
    assert taken.event_types == {"page_view": 1}
    assert [late.counted_window_seconds for late in taken.late_events] == [[]]


def test_a_partition_resumes_from_its_committed_watermark() -> None:
    ingest = ingestor(MKPI_WINDOW_SIZES="60", MKPI_GRACE_SECONDS="0", MKPI_WINDOW_RETENTION_SECONDS="60")
    committed = datetime(2026, 11, 27, 10, 5, tzinfo=UTC).timestamp()
    ingest.assign(RawPartition("raw", 0), 100, committed, new_state())
    assert ingest.has_pending, "the restored mark is not published yet"
    screened = ingest.screen([record(0, 100, page_view("behind", "organic"))])
    count(ingest, screened)
    taken = ingest.take()
    assert taken.outcomes == {"late": 1}
    assert taken.commits[TopicPartition("raw", 0)].next_offset == 101
    assert [(m.raw_partition, m.watermark) for m in taken.marks] == [(0, committed)]


def test_through_the_repartition_an_event_is_judged_by_its_own_raw_partition() -> None:
    """Raw partition 0 runs three hours ahead of raw partition 1; both reach repartitioned
    partition 0. An event of partition 1 is judged by partition 1's watermark (the stage's
    stamp), not by what partition 0 brought before it, and the marks go per raw partition."""
    ingest = ingestor(MKPI_RAW_KEYED_BY_SUBJECT="false", MKPI_WINDOW_SIZES="60,3600")
    ahead, behind = NOW.timestamp() + 3 * 3600, NOW.timestamp() - 20
    screened = ingest.screen(
        [
            stage_marks(0, 0, {0: ahead, 1: behind}),
            copied(0, 1, page_view("from-0", "organic"), raw_partition=0, stamp=ahead),
            copied(0, 2, page_view("from-1", "organic"), raw_partition=1, stamp=behind),
        ]
    )
    count(ingest, screened)
    ingest.counted_partitions = 3
    taken = ingest.take()
    assert taken.outcomes == {"late": 1, "valid": 1}, "the marks message is no raw message"
    [late] = taken.late_events
    assert late.source_offset == 1, "partition 0's own event is late by partition 0's watermark"
    assert taken.commits[TopicPartition("raw", 0)].next_offset == 3
    assert [
        (m.counted_partition, m.raw_partition, m.watermark, m.counted_partitions, m.raw_partitions)
        for m in taken.marks
    ] == [
        (0, 0, ahead, 3, 2),
        (0, 1, NOW.timestamp() - 10, 3, 2),
    ], "partition 1 as far as its event read here took it"
    assert not ingest.has_pending


def test_only_records_from_a_taken_over_position_on_are_read() -> None:
    """Around a take-over the consumer hands out records from before the committed offset, or
    the same records again after the take-over moves it back: they are not read twice."""
    ingest = ingestor()
    tp = TopicPartition("raw", 0)
    batch = [record(0, offset, page_view(f"e{offset}", "organic")) for offset in range(100, 104)]
    assert ingest.unread(tp, batch) == [], "not taken over yet"
    ingest.assign(tp, 102, None, new_state())
    assert [r.offset for r in ingest.unread(tp, batch)] == [102, 103]
    screened = ingest.screen(ingest.unread(tp, batch))
    count(ingest, screened)
    assert ingest.unread(tp, batch) == [], "read once; the second delivery is dropped"
    later = [record(0, 104, page_view("e104", "organic"))]
    assert ingest.unread(tp, later) == later
    ingest.revoke(tp)
    assert ingest.unread(tp, later) == []


def test_cell_names_are_cached_for_windows_that_can_take_events_and_stay_right() -> None:
    def at_minute(minute: int, event_id: str) -> bytes:
        """A human open: its unique open is decided in published cells named through the cache."""
        event = {
            "type": "email_open",
            "schema_version": "1-0-0",
            "event_id": event_id,
            "occurred_at": f"2026-11-27T09:{minute:02d}:30Z",
            "email": {"message_id": f"m-{event_id}", "recipient": "reader@example.com"},
            "utm": {"source": "newsletter", "medium": "email", "campaign": "c1"},
        }
        return json.dumps(event).encode()

    def unique_opens(ingest: BatchIngestor) -> dict[tuple[int, int, str, str], int]:
        return {
            (d.window_seconds, d.window_start, d.channel, d.campaign): d.measures["email_unique_opens"]
            for d in ingest.take().deltas
            if "email_unique_opens" in d.measures
        }

    settings = {"MKPI_GRACE_SECONDS": "0", "MKPI_WINDOW_RETENTION_SECONDS": "60"}
    # Partition 0 walks twenty minutes forward; partition 1, behind it, still sends to windows
    # partition 0 has left; then partition 0 moves on again.
    sent = [(0, minute) for minute in range(30, 50)] + [(1, 31), (1, 46), (0, 50)]
    ingest = ingestor(**settings)
    for offset, (partition, minute) in enumerate(sent):
        message = at_minute(minute, f"e{offset}")
        count(ingest, ingest.screen([record(partition, offset, message)]))
        alone = ingestor(**settings)
        count(alone, alone.screen([record(partition, offset, message)]))
        # The unique open's cells, named through the cache, are those a fresh ingestor names.
        expected = unique_opens(alone)
        assert unique_opens(ingest) == expected and len(expected) == 12
    minute_starts = sorted(ingest._named[60])
    # A minute window takes events until its end + grace + retention (here 60 s).
    assert minute_starts == [int(datetime(2026, 11, 27, 9, m, tzinfo=UTC).timestamp()) for m in (48, 49, 50)]
    assert len(ingest._named[3600]) == len(ingest._named[86400]) == 1


def test_most_messages_being_duplicates_is_said_once_a_period() -> None:
    now = [0.0]
    share = DuplicateShare(period_seconds=60, least=100, monotonic=lambda: now[0])
    assert share.observe(Counter(duplicate=5979)) is None, "not before the period ends"
    now[0] = 61
    warning = share.observe(Counter(valid=21))
    assert warning is not None and "5979 of the last 6000 raw messages were duplicates" in warning
    now[0] = 122
    assert share.observe(Counter(valid=60, duplicate=40)) is None, "a minority of duplicates is traffic"
    now[0] = 183
    assert share.observe(Counter(duplicate=99)) is None, "too few to say"


def test_visitors_of_a_flush_are_rolled_up_into_every_published_cell_they_count_in() -> None:
    ingest = ingestor(MKPI_WINDOW_SIZES="60,3600")
    views = [
        page_view("a", "organic", anonymous_id="v1"),
        page_view("b", "cpc", anonymous_id="v1"),
        page_view("c", "organic", anonymous_id="v2", occurred_at="2026-11-27T10:00:59Z"),
    ]
    count(ingest, ingest.screen([record(0, i, v) for i, v in enumerate(views)]))
    visitors = ingest.take().visitors
    pseudonym = Pseudonymizer("k" * 32)
    v1, v2 = pseudonym("v1"), pseudonym("v2")
    minute = hour = int(datetime(2026, 11, 27, 10, 0, tzinfo=UTC).timestamp())
    for size, start in ((60, minute), (3600, hour)):
        assert visitors[CellKey(size, start, ALL, ALL)] == {v1, v2}
        assert visitors[CellKey(size, start, "organic_search", ALL)] == {v1, v2}
        assert visitors[CellKey(size, start, "paid_search", "c1")] == {v1}
    assert len(visitors) == 2 * 6, "per window: 2 channels, 1 campaign, 2 drill-downs, overall"
    assert ingest.take().visitors == {}


def test_event_ids_are_remembered_as_keyed_digests() -> None:
    ingest = ingestor()
    count(ingest, ingest.screen([record(0, 1, page_view("user@example.com", "organic"))]))
    state = ingest.state(0)
    assert state is not None
    taken = state.take_changes()
    assert taken is not None
    [changes] = taken.records
    assert "user@example.com" not in repr(changes)
    assert [key for key, _ in changes.sightings] == [
        "e:" + Pseudonymizer("k" * 32).digest("user@example.com")
    ]
