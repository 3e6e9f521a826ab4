"""The agent applies every committed delta even when Faust's consumer passes some by.

Faust's stream can skip records around a rebalance and still commit past them, and can resume
past records it dropped while seeking (docs/architecture.md). Both leave the Faust group's
committed offset beyond records the agent never saw, or whose outputs died with a worker; here
those states are made on purpose, by committing the group's offset past a transaction of deltas
before the worker starts, and by writing to the changelog what a worker killed while publishing
leaves there.
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from agents.kafka.connections import kafka_options
from agents.kafka.gap_reader import DeltaGapReader
from agents.kafka.topics import ensure_topics
from agents.settings import Settings
from streams.core.table_keys import published_key
from tests.support import WorkerProcess, isolated_settings, leads_delta, read_topic_until

pytestmark = pytest.mark.kafka

CAMPAIGN = "gap-probe"


async def send_transactions(
    settings: Settings, transactions: list[tuple[list[bytes], bool]], partition: int = 0
) -> list[list[int]]:
    """Each (values, commit) is one transaction on a delta partition, committed or aborted;
    returns the offsets its records got."""
    producer = AIOKafkaProducer(
        **kafka_options(settings), transactional_id=f"{settings.topics.app_id}-gap-probe"
    )
    await producer.start()
    offsets: list[list[int]] = []
    try:
        for values, commit in transactions:
            await producer.begin_transaction()
            sent = [
                await producer.send_and_wait(settings.topics.deltas_topic, value, partition=partition)
                for value in values
            ]
            offsets.append([metadata.offset for metadata in sent])
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()
    return offsets


async def test_the_gap_reader_returns_the_committed_records_of_a_range() -> None:
    settings = isolated_settings()
    await ensure_topics(settings)
    minute = int(time.time()) // 60 * 60
    delta = functools.partial(leads_delta, minute, CAMPAIGN)
    offsets = await send_transactions(
        settings,
        [
            ([delta(1), delta(2)], True),
            ([delta(1000)], False),
            ([delta(3)], True),
        ],
    )
    (first, second), (aborted,), (third,) = offsets
    # Between the records: a commit marker, the aborted record and its marker.
    assert second == first + 1 and aborted == second + 2 and third == aborted + 2
    reader = DeltaGapReader(settings)
    try:
        whole = await reader.read(0, range(first, third + 1))
        leads = [json.loads(value or b"")["deltas"][0]["measures"]["leads"] for _, value in whole]
        assert list(zip([offset for offset, _ in whole], leads, strict=True)) == [
            (first, 1),
            (second, 2),
            (third, 3),
        ]
        assert await reader.read(0, range(second + 1, third)) == [], "markers and aborted records only"
        assert [offset for offset, _ in await reader.read(0, range(second, third))] == [second]
        # Another partition, then back: each read sees only its own partition's records.
        ((elsewhere,),) = await send_transactions(settings, [([delta(5)], True)], partition=1)
        assert [offset for offset, _ in await reader.read(1, range(0, elsewhere + 1))] == [elsewhere]
        assert [offset for offset, _ in await reader.read(0, range(first, second))] == [first]
    finally:
        await reader.stop()
    fresh = DeltaGapReader(settings)  # the same answers from the broker, not from the last read
    try:
        assert await fresh.read(0, range(second + 1, third)) == []
        assert [offset for offset, _ in await fresh.read(0, range(first, second + 1))] == [first, second]
    finally:
        await fresh.stop()


async def test_deltas_the_faust_group_committed_past_are_applied(tmp_path: Path) -> None:
    settings = isolated_settings()
    await ensure_topics(settings)
    minute = int(time.time()) // 60 * 60  # a window that cannot have expired
    delta = functools.partial(leads_delta, minute, CAMPAIGN)
    offsets = await send_transactions(
        settings,
        [
            ([delta(1), delta(2), delta(4)], True),
            ([delta(1000)], False),
            ([delta(8), delta(16)], True),
        ],
    )
    passed_by = offsets[2][1]  # the group resumes at the last record: all before it were passed by
    await commit_group_offset(settings, 0, passed_by)

    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        key = json.dumps(["leads", 60, minute, "*", CAMPAIGN], separators=(",", ":")).encode()
        records = await read_topic_until(
            settings,
            settings.topics.kpi_updates_topic,
            lambda found: any(json.loads(r.value)["value"] == 31 for r in found if r.key == key),
            timeout=60,
        )
        values = [json.loads(r.value)["value"] for r in records if r.key == key]
        assert values[-1] == 1 + 2 + 4 + 8 + 16, values
        assert 1000 + 31 not in values, "the aborted delta stays out"
        samples = worker.metrics()
        assert samples[("mkpi_delta_gap_records_total", ())] == 4, "four records read back from Kafka"
    finally:
        worker.stop()


async def commit_group_offset(settings: Settings, partition: int, offset: int) -> None:
    """Set the Faust group's committed offset of a delta partition, as Faust itself might."""
    group = AIOKafkaConsumer(
        **kafka_options(settings), group_id=settings.topics.app_id, enable_auto_commit=False
    )
    await group.start()
    try:
        tp = TopicPartition(settings.topics.deltas_topic, partition)
        group.assign([tp])
        await group.commit({tp: OffsetAndMetadata(offset, "")})
    finally:
        await group.stop()


def marks_at(settings: Settings, watermark: float) -> list[dict[str, object]]:
    """Watermark marks of every raw partition, as ingest sends them."""
    return [
        {
            "kind": "watermark",
            "schema_version": "1-0-0",
            "raw_partition": raw,
            "raw_partitions": settings.topics.partitions,
            "watermark": watermark,
            "idle": False,
        }
        for raw in range(settings.topics.partitions)
    ]


async def test_outputs_lost_with_a_worker_are_published_again_though_faust_resumes_past_them(
    tmp_path: Path,
) -> None:
    """A worker killed while publishing leaves its record's table writes in the changelog and
    the partition's published offset behind them. The next worker must publish that record's
    outputs again, even when the group's committed offset is past it (Faust resumed past it),
    and even for a cell whose window the record's own marks expired."""
    grace, retention = 60, 600
    settings = isolated_settings(grace_seconds=grace, window_retention_seconds=retention)
    await ensure_topics(settings)
    now = time.time()
    minute = int(now) // 60 * 60
    old_minute = minute - 3600  # closed by the first message's marks, expired by the second's

    def message(deltas: list[tuple[int, int]], watermark: float) -> bytes:
        cells = [json.loads(leads_delta(start, CAMPAIGN, leads))["deltas"][0] for start, leads in deltas]
        body = {"schema_version": "2-0-0", "deltas": cells, "marks": marks_at(settings, watermark)}
        return json.dumps(body).encode()

    key, old_key = (
        json.dumps(["leads", 60, start, "*", CAMPAIGN], separators=(",", ":")).encode()
        for start in (minute, old_minute)
    )

    def leads(records: list[ConsumerRecord[bytes, bytes]], of: bytes = key) -> list[int]:
        return [json.loads(r.value)["value"] for r in records if r.key == of]

    (_, (second,)) = await send_transactions(
        settings,
        [
            ([message([(old_minute, 1)], old_minute + 60 + grace)], True),
            ([message([(minute, 1), (old_minute, 1)], now)], True),  # a revision, then expiry
        ],
    )
    worker = WorkerProcess(settings, tmp_path, "first")
    worker.start()
    try:
        await read_topic_until(
            settings, settings.topics.kpi_updates_topic, lambda found: 2 in leads(found, old_key), 60
        )
    finally:
        assert worker.stop() == 0
    # What the first worker would have left had it died before the broker acknowledged the
    # outputs of ``second``: its writes in the changelog, the published offset still before it.
    producer = AIOKafkaProducer(**kafka_options(settings))
    await producer.start()
    try:
        changelog = settings.topics.kpi_table_changelog_topic
        await producer.send_and_wait(changelog, str(second - 1).encode(), key=published_key(0), partition=0)
    finally:
        await producer.stop()
    await commit_group_offset(settings, 0, second + 2)  # past the record and its commit marker

    worker = WorkerProcess(settings, tmp_path, "second")
    worker.start()
    try:
        await send_transactions(settings, [([leads_delta(minute, CAMPAIGN, 2)], True)])
        records = await read_topic_until(
            settings, settings.topics.kpi_updates_topic, lambda found: 3 in leads(found), 60
        )
        assert leads(records) == [1, 1, 3], "the outputs of the second record went out again, once"
        assert leads(records, old_key) == [1, 2, 2], "the revised cell its marks expired too"
        results = await read_topic_until(
            settings, settings.topics.window_results_topic, lambda found: len(leads(found, old_key)) == 3, 10
        )
        assert leads(results, old_key) == [1, 2, 2], "final result, revision, revision again"
        # Read back from Kafka: on partition 0 exactly that record. (Other partitions may have a
        # gap of their own, the first worker's last marks, which Faust can also pass by.)
        read_back = re.findall(
            r"delta partition 0: Faust passed by (\d+) records at offsets (\d+)-", worker.log_tail(400)
        )
        assert read_back == [("1", str(second))], read_back
        assert worker.metrics()[("mkpi_delta_gap_records_total", ())] >= 1
    finally:
        worker.stop()
