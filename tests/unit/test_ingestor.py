"""BatchIngestor: the pure part of ingest, fed with consumer records built by hand."""

import json

from aiokafka import ConsumerRecord, TopicPartition

from streams.ingest import BatchIngestor
from streams.kpis import ALL
from streams.settings import Settings


def record(partition: int, offset: int, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
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
        headers=(),
    )


def page_view(event_id: str, medium: str) -> bytes:
    return json.dumps(
        {
            "type": "page_view",
            "schema_version": "1-0-0",
            "event_id": event_id,
            "occurred_at": "2026-11-27T10:00:30Z",
            "utm": {"source": "google", "medium": medium, "campaign": "c1"},
            "page": {"path": "/"},
        }
    ).encode()


def test_every_message_ends_valid_or_bad_and_offsets_advance_per_partition() -> None:
    ingestor = BatchIngestor(Settings.from_env({}))
    ingestor.add(record(0, 5, page_view("a", "organic")))
    ingestor.add(record(0, 6, b"{broken"))
    ingestor.add(record(1, 9, None))
    ingestor.add(record(1, 10, page_view("b", "cpc")))
    taken = ingestor.take()
    assert taken.outcomes == {"valid": 2, "bad": 2}
    assert taken.reasons == {"not_json": 2}
    assert taken.next_offsets == {TopicPartition("raw", 0): 7, TopicPartition("raw", 1): 11}
    assert [(row.source_partition, row.source_offset) for row in taken.bad_rows] == [(0, 6), (1, 9)]
    counts = {(d.kpi, d.channel, d.campaign): d.count for d in taken.deltas}
    assert counts[("organic_traffic", ALL, "c1")] == 1
    assert counts[("page_views", ALL, "c1")] == 2
    assert counts[("page_views", "paid_search", ALL)] == 1
    assert not ingestor.has_pending
    empty = ingestor.take()
    assert (empty.deltas, empty.bad_rows, empty.next_offsets) == ([], [], {})
