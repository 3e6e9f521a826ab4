"""The KPI table's stores on disk, before Faust opens them: one that matches its changelog is
kept; one recording an offset past its changelog's end (an earlier topic of the same name) or
one that cannot be opened is removed, for Faust to rebuild from the changelog."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import rocksdict
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.kafka.connections import kafka_options
from agents.kafka.topics import ensure_topics
from agents.runtime.table_stores import (
    FAUST_OFFSET_KEY,
    check_table_stores,
    persisted_offset,
    table_store_paths,
)
from agents.settings import KPI_TABLE_NAME, Settings
from devtools.generator import Fractions, Scenario
from tests.support import WorkerProcess, isolated_settings, produce, wait_for_accounting

pytestmark = pytest.mark.kafka


def faust_store(settings: Settings, partition: int, offset: int, rows: int = 10) -> None:
    path = settings.worker_dir / "v1" / "tables" / f"{KPI_TABLE_NAME}-{partition}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    for row in range(rows):
        db[f"cell-{row}".encode()] = b"x" * 200
    db[FAUST_OFFSET_KEY] = str(offset).encode()
    db.flush()
    db.close()
    del db


async def test_stores_that_do_not_match_their_changelog_are_removed_before_the_worker_starts() -> None:
    settings = isolated_settings()
    topic = settings.topics.kpi_table_changelog_topic
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**kafka_options(settings))
    await producer.start()
    try:
        for row in range(3):
            await producer.send_and_wait(topic, b"v", key=f"cell-{row}".encode(), partition=0)
    finally:
        await producer.stop()

    faust_store(settings, 0, offset=2)  # the changelog's last record: current
    faust_store(settings, 1, offset=7)  # past the end (0) of its partition: another topic's
    faust_store(settings, 2, offset=0, rows=2000)
    [table] = sorted(table_store_paths(settings)[2].glob("*.sst"))
    with table.open("r+b") as file:  # damaged
        file.truncate(100)

    assert await check_table_stores(settings) == [1, 2]
    assert sorted(table_store_paths(settings)) == [0]


async def test_after_a_clean_stop_the_table_stores_reflect_their_whole_changelog(tmp_path: Path) -> None:
    """A restart on the same disk then reads nothing of the changelog back; the counts stay."""
    settings = isolated_settings()
    await ensure_topics(settings)
    scenario = Scenario(5, fractions=Fractions(duplicates=0.02), live=True)
    messages = list(scenario.messages(1500, lambda: datetime.now(UTC)))
    worker = WorkerProcess(settings, tmp_path, "first")
    worker.start()
    try:
        await produce(
            settings, settings.topics.raw_topic, [m.payload for m in messages], [m.key for m in messages]
        )
        await wait_for_accounting(settings, len(messages), timeout=90)
    finally:
        assert worker.stop() == 0
    topic = settings.topics.kpi_table_changelog_topic
    consumer = AIOKafkaConsumer(**kafka_options(settings))
    await consumer.start()
    try:
        paths = table_store_paths(settings)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in paths])
    finally:
        await consumer.stop()
    assert sorted(paths) == list(range(settings.topics.partitions))
    for partition, path in paths.items():
        end = ends[TopicPartition(topic, partition)]
        assert end > 0 and persisted_offset(path) == end - 1, (partition, end)
