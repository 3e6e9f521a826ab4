"""Ingest's state on the real broker: snapshots, the records they replace deleted, and after a
kill -9 a restore that still knows every event id: on the same disk from the store and the
journal's tail only, on a new disk from the newest snapshot."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from agents.kafka.connections import kafka_options
from agents.kafka.state_journal import StateJournal, encode_record
from agents.kafka.topics import ensure_topics
from agents.runtime.partition_state import PartitionStores
from agents.settings import Settings
from agents.state.rocks import StoreBudget
from devtools.generator import Fractions, GroundTruth, Scenario
from streams.contracts.checkpoints import CommitPoint
from streams.core.subject_state import JournalChanges, PartitionState
from tests.support import WorkerProcess, isolated_settings, produce, produce_in_parts, wait_for_accounting

pytestmark = pytest.mark.kafka

RESTORED = re.compile(
    r"partition \d+'s state: (kept the store on disk|rebuilt from the journal), (\d+) journal records "
    r"read \(offsets (\d+)-(\d+)\)"
)


async def journal_offsets(settings: Settings) -> tuple[list[int], list[int]]:
    """Where each partition of the state journal begins and ends."""
    consumer = AIOKafkaConsumer(**kafka_options(settings))
    await consumer.start()
    try:
        topic = settings.topics.state_journal_topic
        partitions = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        return [starts[tp] for tp in partitions], [ends[tp] for tp in partitions]
    finally:
        await consumer.stop()


@pytest.mark.parametrize("disk", ["same", "new"])
async def test_a_restored_worker_drops_retries_of_events_seen_before(tmp_path: Path, disk: str) -> None:
    settings = isolated_settings(state_snapshot_entries=100)
    await ensure_topics(settings)
    scenario = Scenario(11, fractions=Fractions(duplicates=0.05, malformed=0.01), live=True)
    messages = list(scenario.messages(4000, lambda: datetime.now(UTC)))
    first, second = messages[:2000], messages[2000:]
    retries = [m for m in first if m.expect == "valid"][:200]  # sent again after the restart
    truth = GroundTruth()
    for message in messages:
        truth.add(message)

    killed = WorkerProcess(settings, tmp_path, "killed")
    killed.start()
    # In parts, so that several flushes journal changes and snapshots follow.
    await produce_in_parts(settings, [m.payload for m in first], [m.key for m in first], 8, 0.7)
    await wait_for_accounting(settings, len(first), timeout=90)
    killed.kill()
    starts, ends = await journal_offsets(settings)
    assert any(start > 0 for start in starts), "records before a snapshot deleted"

    again = second + retries
    await produce(settings, settings.topics.raw_topic, [m.payload for m in again], [m.key for m in again])
    journaled = sum(ends) - sum(starts)
    restored = settings if disk == "same" else settings.replace(data_dir=str(tmp_path / "new-disk"))
    worker = WorkerProcess(restored, tmp_path, "restored")
    worker.start()
    try:
        totals = await wait_for_accounting(settings, len(messages) + len(retries), timeout=90)
        assert totals["outcomes"] == {
            **truth.outcomes,
            "duplicate": truth.outcomes["duplicate"] + len(retries),
        }
        restores = [(how, int(n), int(a)) for how, n, a, _ in RESTORED.findall(worker.log_path.read_text())]
        assert len(restores) == settings.topics.partitions, restores
        read = sum(n for _, n, _ in restores)
        if disk == "same":
            assert {how for how, _, _ in restores} == {"kept the store on disk"}, restores
            # The killed worker's stores stand at its last commit, or a flush or so before it.
            assert read < journaled / 4, (read, journaled)
        else:
            assert {how for how, _, _ in restores} == {"rebuilt from the journal"}, restores
            assert any(start > 0 for _, _, start in restores), restores  # from a snapshot
            assert read <= journaled, (read, journaled)
    finally:
        worker.stop()


async def journal_flush(
    settings: Settings, state: PartitionState, point: CommitPoint
) -> tuple[CommitPoint, JournalChanges]:
    """What a flush does up to its commit: the state's changes to the journal (partition 0),
    and the commit point that names their span."""
    changes = state.take_changes()
    assert changes is not None
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(settings.topics.state_journal_topic, encode_record(r), partition=0)
            for r in changes.records
        ]
    finally:
        await producer.stop()
    return dataclasses.replace(point, state_to=sent[-1].offset + 1), changes


async def test_a_store_a_flush_behind_its_commit_reads_that_flush_from_the_journal(tmp_path: Path) -> None:
    """The worker died between a flush's Kafka commit and the store write: the store stands at
    the flush before, and the restore reads exactly the records of the flush it missed."""
    settings = isolated_settings()
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    journal = StateJournal(settings, admin)
    await journal.start()
    budget = StoreBudget(8, 8)
    try:
        stores = PartitionStores(tmp_path / "disk", budget, journal, snapshot_after=1000)
        state = await stores.restore(0, 0, None)
        assert state.first_sighting("e:first", 600)
        first, changes = await journal_flush(settings, state, CommitPoint(10, None))
        stores.committed(state, first, changes)
        assert state.first_sighting("e:second", 600)
        second, _ = await journal_flush(settings, state, dataclasses.replace(first, next_offset=20))
        stores.close_all()  # killed: the second flush committed, its store write never happened

        again = PartitionStores(tmp_path / "disk", budget, journal, snapshot_after=1000)
        restored = await again.restore(0, 20, second)
        assert again.restored[0] == (True, second.state_to - first.state_to)  # kept; the missed flush
        assert not restored.first_sighting("e:first", 600) and not restored.first_sighting("e:second", 600)
        assert restored.first_sighting("e:third", 600)
        again.close_all()

        elsewhere = PartitionStores(tmp_path / "new-disk", budget, journal, snapshot_after=1000)
        rebuilt = await elsewhere.restore(0, 20, second)
        assert elsewhere.restored[0] == (False, 2)  # every record of the journal
        assert not rebuilt.first_sighting("e:first", 600) and not rebuilt.first_sighting("e:second", 600)
        elsewhere.close_all()
    finally:
        await journal.stop()
        await admin.close()
