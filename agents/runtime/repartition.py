"""Repartitioning: the raw topic, keyed any way, copied to a topic keyed by subject.

Ingest keeps per-subject state with the partition that holds a subject's events, so every
event of a subject must reach one partition. When producers do not key the raw topic by
subject (``MKPI_RAW_KEYED_BY_SUBJECT=false``), this service copies each raw message unchanged
to ``<prefix>.raw-by-subject``, keyed by the pseudonym of its subject, and ingest counts from
there (as Kafka Streams repartitions before a stateful step). Each batch is copied and its raw
offsets committed in one transaction, fenced by group membership like ingest's flushes, so
every raw message is copied exactly once, in the order of its raw partition.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import ConsumerRecord
from mode import Service

from agents.kafka.connections import kafka_options
from agents.kafka.fencing import (
    FENCING_ERRORS,
    FencedTransactionalProducer,
    membership,
    stable_committed_offsets,
)
from agents.kafka.transactions import group_consumer, renewed_producer, transactional_producer
from agents.metrics.registry import Metrics
from agents.settings import Settings
from streams.core.privacy import Pseudonymizer
from streams.core.subjects import subject_key

log = logging.getLogger(__name__)

#: How long copying waits before it reads again after a failed transaction.
RETRY_SECONDS = 5.0


class _Resume(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: RepartitionService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.service.lock:  # a batch in flight is committed (or aborted) first
            for tp in revoked:
                self.service.positions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.service.lock:
            await self.service.resume(assigned)


class RepartitionService(Service):
    """Runs inside the worker when the raw topic is not keyed by subject."""

    consumer: AIOKafkaConsumer
    producer: FencedTransactionalProducer
    admin: AIOKafkaAdminClient

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        worker_name: str,
        pseudonymizer: Pseudonymizer,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.metrics = metrics
        self.pseudonymize = pseudonymizer
        self.client_id = f"{settings.topics.app_id}-repartition"
        self.transactional_id = f"{self.client_id}-{worker_name}"
        self.lock = asyncio.Lock()
        #: Next raw offset to copy, per assigned partition.
        self.positions: dict[TopicPartition, int] = {}

    async def on_start(self) -> None:
        settings = self.settings
        self.consumer = group_consumer(settings, settings.topics.repartition_group_id, self.client_id)
        self.producer = transactional_producer(settings, self.client_id, self.transactional_id)
        self.admin = AIOKafkaAdminClient(
            **kafka_options(settings), client_id=f"{settings.topics.app_id}-repartition"
        )
        await self.admin.start()
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([settings.topics.raw_topic], listener=_Resume(self))
        log.info(
            "repartitioning %s by subject to %s as %s",
            settings.topics.raw_topic,
            settings.topics.by_subject_topic,
            self.transactional_id,
        )

    async def on_stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()
        await self.admin.close()

    async def resume(self, assigned: list[TopicPartition]) -> None:
        """Go on from the committed offsets, once no transaction is still committing them."""
        if not assigned:
            return
        group = self.settings.topics.repartition_group_id
        committed = await stable_committed_offsets(self.admin, group, assigned)
        fresh = [tp for tp in assigned if tp not in committed]
        starts = await self.consumer.beginning_offsets(fresh) if fresh else {}
        for tp in assigned:
            start = committed[tp].offset if tp in committed else starts[tp]
            self.consumer.seek(tp, start)
            self.positions[tp] = start

    def key_of(self, value: bytes | None) -> bytes | None:
        """The subject's pseudonym; None (any partition) for a message naming nobody, which
        becomes a bad row wherever it lands."""
        subject = subject_key(value or b"")
        return None if subject is None else self.pseudonymize(subject.decode()).encode()

    @Service.task
    async def _copy(self) -> None:
        settings = self.settings
        while not self.should_stop:
            batches = await self.consumer.getmany(
                timeout_ms=200, max_records=settings.ingest.ingest_max_records
            )
            async with self.lock:
                records = [
                    record
                    for tp, batch in batches.items()
                    if tp in self.positions
                    for record in batch
                    if record.offset >= self.positions[tp]
                ]
                copied = not records or await self._copied(records)
            if not copied:
                await asyncio.sleep(RETRY_SECONDS)
                async with self.lock:
                    await self.resume(list(self.consumer.assignment()))

    async def _copied(self, records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        """Copy a batch and commit its raw offsets in one transaction; False when it aborted."""
        topic = self.settings.topics.by_subject_topic
        ends: dict[TopicPartition, int] = {}
        try:
            async with self.producer.transaction():
                deliveries: list[asyncio.Future[Any]] = []
                for record in records:
                    deliveries.append(
                        await self.producer.send(topic, value=record.value, key=self.key_of(record.value))
                    )
                    ends[TopicPartition(record.topic, record.partition)] = record.offset + 1
                for outcome in await asyncio.gather(*deliveries, return_exceptions=True):
                    if isinstance(outcome, BaseException):
                        raise outcome
                await self.producer.send_offsets_to_transaction(
                    {tp: (offset, "") for tp, offset in ends.items()},
                    membership(self.consumer, self.settings.topics.repartition_group_id),
                )
        except ProducerFenced:
            log.critical(
                "another worker uses the transactional id %s; give each worker its own "
                "MKPI_WORKER_NAME. Stopping repartitioning.",
                self.transactional_id,
            )
            raise
        except FENCING_ERRORS as exc:
            log.warning("repartitioning batch aborted, its partitions moved to another worker: %s", exc)
            return False
        except KafkaError:
            log.exception("repartitioning a batch failed; it is copied again in %.0f s", RETRY_SECONDS)
            self.producer = await renewed_producer(
                self.settings, self.producer, self.client_id, self.transactional_id
            )
            return False
        self.positions.update(ends)
        self.metrics.repartitioned.inc(len(records))
        return True
