"""One consume -> transaction -> commit loop, shared by ingest and the repartition stage.

A ``TransactionalStage`` reads one topic in a consumer group (read_committed, committing
nothing itself) and writes what it makes of a batch with a fenced transactional producer, the
input offsets committed in the same transaction (``agents.kafka.checkpoint``). It owns the
clients, the rebalance (``assign``: resume each partition from its committed offset once no
transaction is still committing it; ``revoke``), and what a failed transaction means:

- another worker has the partitions now (fenced): read on from the committed offsets;
- a topic refused an output: read the batch again after a pause (its cause needs an operator);
- any other Kafka error: a new producer (a refused batch used up its sequence number), then read
  the batch again;
- another worker uses this worker's transactional id: stop, loudly.

A subclass says what a batch makes (``handle``) and what a partition's assignment brings
(``assign_partition``), under ``lock``, which keeps a batch from being counted halfway through
a rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import ConsumerRecord
from mode import Service

from agents.kafka.checkpoint import REFUSED_RETRY_SECONDS, Checkpoint, OutputRefused
from agents.kafka.connections import kafka_options
from agents.kafka.fencing import FENCING_ERRORS, FencedTransactionalProducer, stable_committed_offsets
from agents.kafka.transactions import group_consumer, renewed_producer, transactional_producer
from agents.settings import Settings
from streams.contracts.checkpoints import CommitPoint

log = logging.getLogger(__name__)

T = TypeVar("T")
Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: TransactionalStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.stage.revoke(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.stage.lock:
            await self.stage.assign(assigned)


class TransactionalStage(Service):
    consumer: AIOKafkaConsumer
    producer: FencedTransactionalProducer
    admin: AIOKafkaAdminClient

    def __init__(
        self,
        settings: Settings,
        worker_name: str,
        *,
        role: str,
        topic: str,
        group_id: str,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        #: What the stage is called in client ids and logs (``ingest``, ``repartition``).
        self.role = role
        self.topic = topic
        self.group_id = group_id
        self.client_id = f"{settings.topics.app_id}-{role}"
        self.transactional_id = f"{self.client_id}-{worker_name}"
        self.lock = asyncio.Lock()
        self._retry_after = 0.0

    async def on_start(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here, not in __init__.
        settings = self.settings
        self.consumer = group_consumer(settings, self.group_id, self.client_id)
        self.producer = transactional_producer(settings, self.client_id, self.transactional_id)
        self.admin = AIOKafkaAdminClient(**kafka_options(settings), client_id=self.client_id)
        await self.admin.start()
        await self.producer.start()
        await self.consumer.start()
        await self.clients_started()
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        log.info("%s reading %s as %s", self.role, self.topic, self.transactional_id)

    async def clients_started(self) -> None:
        """The subclass's own start, once the clients run and before the first assignment."""

    async def on_stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()
        await self.admin.close()

    async def assign(self, assigned: list[TopicPartition]) -> None:
        """Resume the assigned partitions from their committed offsets (the log's start for a
        partition never committed), read once no transaction is still committing them: the
        previous owner's last one may be committed but not yet visible, and the consumer's own
        lookup does not wait for that. Under ``lock``."""
        log.info("%s assigned %s", self.role, sorted(tp.partition for tp in assigned))
        committed = await stable_committed_offsets(self.admin, self.group_id, assigned) if assigned else {}
        fresh = [tp for tp in assigned if tp not in committed]
        log_starts = await self.consumer.beginning_offsets(fresh) if fresh else {}
        for tp in assigned:
            offset_and_metadata = committed.get(tp)
            point = None if offset_and_metadata is None else CommitPoint.from_commit(*offset_and_metadata)
            start = log_starts[tp] if point is None else point.next_offset
            await self.assign_partition(tp, start, point)
            self.consumer.seek(tp, start)
        await self.assigned(assigned)

    @abstractmethod
    async def assign_partition(self, tp: TopicPartition, start: int, point: CommitPoint | None) -> None:
        """Take ``tp`` on at ``start``, as committed at ``point`` (None: never committed)."""

    async def assigned(self, assigned: list[TopicPartition]) -> None:
        """After ``assign``: what the subclass keeps about the assignment as a whole."""

    @abstractmethod
    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Give ``revoked`` up (the subclass takes ``lock`` where it needs it)."""

    @abstractmethod
    async def handle(self, batches: Batches) -> None:
        """What the stage makes of a batch read."""

    @Service.task
    async def _read(self) -> None:
        while not self.should_stop:
            pause = self._retry_after - time.monotonic()
            if pause > 0:  # after a refused output: one error per retry, not thousands
                await asyncio.sleep(pause)
            batches = await self.consumer.getmany(
                timeout_ms=int(self.settings.ingest.flush_interval_seconds * 1000),
                max_records=self.settings.ingest.ingest_max_records,
            )
            await self.handle(batches)

    async def in_transaction(self, write: Callable[[Checkpoint], Awaitable[T]]) -> T | None:
        """``write`` a checkpoint in one transaction; None when it aborted, after which the
        consumer stands at the committed offsets again. Call under ``lock``."""
        try:
            async with self.producer.transaction():
                return await write(Checkpoint(self.producer, self.consumer, self.group_id, self.role))
        except ProducerFenced:
            log.critical(
                "another worker uses the transactional id %s; give each worker its own MKPI_WORKER_NAME. "
                "Stopping %s.",
                self.transactional_id,
                self.role,
            )
            raise
        except OutputRefused as exc:
            log.error("%s", exc)
            self.aborted(exc)
            self._retry_after = time.monotonic() + REFUSED_RETRY_SECONDS
            await self._renew_producer()
        except FENCING_ERRORS as exc:
            log.warning("%s batch aborted, its partitions moved to another worker: %s", self.role, exc)
            self.aborted(exc)
        except KafkaError as exc:
            log.exception("%s batch failed; its input will be read again", self.role)
            self.aborted(exc)
            await self._renew_producer()
        await self.assign(list(self.consumer.assignment()))  # read again from the committed offsets
        return None

    def aborted(self, error: KafkaError) -> None:
        """A transaction aborted with ``error`` (for the subclass's metrics)."""

    async def _renew_producer(self) -> None:
        self.producer = await renewed_producer(
            self.settings, self.producer, self.client_id, self.transactional_id
        )
