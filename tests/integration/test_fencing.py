"""Transactional offset commits fenced by group membership (agents/kafka/fencing.py), on the real
broker: a commit in the name of a generation the group has left is refused and its whole
transaction aborted, while aiokafka's own commit, which names only the group, is not."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from agents.kafka.connections import kafka_options
from agents.kafka.fencing import FENCING_ERRORS, FencedTransactionalProducer, membership
from agents.kafka.topics import ensure_topics
from agents.settings import Settings
from tests.support import isolated_settings, read_everything

pytestmark = pytest.mark.kafka


def group_consumer(settings: Settings, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        settings.topics.raw_topic,
        **kafka_options(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )


async def poll_until(consumers: list[AIOKafkaConsumer], done: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        for consumer in consumers:
            await consumer.getmany(timeout_ms=100)
    assert done(), "the group did not settle"  # type: ignore[operator]


async def committed_offset(consumer: AIOKafkaConsumer, settings: Settings, wanted: int | None) -> int | None:
    """The group's committed offset of raw partition 0, once it is ``wanted`` (the transaction
    coordinator writes a commit's markers to the group's log just after EndTxn answers)."""
    probe = TopicPartition(settings.topics.raw_topic, 0)
    for _ in range(50):
        offset = await consumer.committed(probe)
        if offset == wanted:
            break
        await asyncio.sleep(0.2)
    return offset


async def commit(
    producer: AIOKafkaProducer, settings: Settings, value: bytes, offset: int, group: str
) -> None:
    async with producer.transaction():
        await producer.send(settings.topics.late_events_topic, value)
        await producer.send_offsets_to_transaction(
            {TopicPartition(settings.topics.raw_topic, 0): OffsetAndMetadata(offset, "")}, group
        )


async def test_a_commit_in_the_name_of_a_left_generation_aborts_its_transaction() -> None:
    settings = isolated_settings(partitions=1)
    await ensure_topics(settings)
    group = f"{settings.topics.topic_prefix}-fencing"
    first, second = group_consumer(settings, group), group_consumer(settings, group)
    fenced = FencedTransactionalProducer(**kafka_options(settings), transactional_id=f"{group}-fenced")
    unfenced = AIOKafkaProducer(**kafka_options(settings), transactional_id=f"{group}-unfenced")
    for client in (first, fenced, unfenced):
        await client.start()
    try:
        await poll_until([first], lambda: first.assignment() and first._coordinator.generation >= 0)
        stale = membership(first, group)
        # A second member joins: the group moves to a new generation.
        await second.start()
        await poll_until(
            [first, second],
            lambda: (
                second.assignment() is not None
                and second._coordinator.generation > stale.generation
                and first._coordinator.generation == second._coordinator.generation
            ),
        )
        current = membership(first, group)
        assert current.generation > stale.generation and current.member_id == stale.member_id

        with pytest.raises(FENCING_ERRORS):
            await commit(fenced, settings, b"stale", 5, stale)
        assert await committed_offset(first, settings, None) is None, "the stale commit left no offset"

        await commit(fenced, settings, b"current", 3, current)
        assert await committed_offset(first, settings, 3) == 3

        # aiokafka's own commit names only the group: nothing stops a stale one.
        await commit(unfenced, settings, b"unchecked", 7, group)
        assert await committed_offset(first, settings, 7) == 7

        records = await read_everything(settings, [settings.topics.late_events_topic])
        assert sorted(r.value for r in records) == [b"current", b"unchecked"]
    finally:
        for client in (first, second, fenced, unfenced):
            await client.stop()
