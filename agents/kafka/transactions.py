"""The clients of a consume-transform-produce loop (ingest, repartitioning): a group consumer
that reads committed records and commits nothing itself, and a fenced transactional producer
that commits the offsets with what it writes."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from agents.kafka.connections import kafka_options
from agents.kafka.fencing import FencedTransactionalProducer
from agents.settings import Settings

log = logging.getLogger(__name__)


def group_consumer(settings: Settings, group_id: str, client_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **kafka_options(settings),
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=settings.kafka.kafka_session_timeout_seconds * 1000,
        heartbeat_interval_ms=settings.kafka.kafka_session_timeout_seconds * 100,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


def transactional_producer(
    settings: Settings, client_id: str, transactional_id: str
) -> FencedTransactionalProducer:
    return FencedTransactionalProducer(
        **kafka_options(settings),
        client_id=client_id,
        transactional_id=transactional_id,
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=1024 * 1024,
    )


async def renewed_producer(
    settings: Settings, stale: FencedTransactionalProducer, client_id: str, transactional_id: str
) -> FencedTransactionalProducer:
    """A fresh producer after a failed transaction, started once the broker takes it. A batch
    the broker refused has used up its sequence number, so every later batch to that partition
    would fail as out of order; the new producer's registration (same transactional id) starts
    the sequences anew, and waits until a transaction whose commit was under way when the
    failure came has ended, so the committed offsets read next are settled."""
    await stale.stop()
    while True:
        producer = transactional_producer(settings, client_id, transactional_id)
        try:
            await producer.start()
            return producer
        except KafkaError as exc:
            await producer.stop()
            log.warning("cannot register the producer %s yet (%r); retrying in 1 s", transactional_id, exc)
            await asyncio.sleep(1)
