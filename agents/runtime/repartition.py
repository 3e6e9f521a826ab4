"""Repartitioning: the raw topic, keyed any way, copied to a topic keyed by subject.

Ingest keeps per-subject state with the partition that holds a subject's events, so every
event of a subject must reach one partition. When producers do not key the raw topic by
subject (``MKPI_RAW_KEYED_BY_SUBJECT=false``), this service copies each raw message unchanged
to ``<prefix>.raw-by-subject``, keyed by the pseudonym of its subject, and ingest counts from
there (as Kafka Streams repartitions before a stateful step). Each batch is copied and its raw
offsets committed in one checkpoint, on the same loop as ingest's flushes
(``agents.runtime.stage``), so every raw message is copied exactly once, in the order of its
raw partition.
"""

from __future__ import annotations

import logging

from aiokafka import TopicPartition

from agents.kafka.checkpoint import Checkpoint
from agents.metrics.registry import Metrics
from agents.runtime.stage import Batches, TransactionalStage
from agents.settings import Settings
from streams.contracts.checkpoints import CommitPoint
from streams.core.privacy import Pseudonymizer
from streams.core.subjects import subject_key

log = logging.getLogger(__name__)


class RepartitionService(TransactionalStage):
    """Runs in a worker of role ``all`` or ``ingest`` when the raw topic is not keyed by subject."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        worker_name: str,
        pseudonymizer: Pseudonymizer,
        **kwargs: object,
    ) -> None:
        topics = settings.topics
        super().__init__(
            settings,
            worker_name,
            role="repartition",
            topic=topics.raw_topic,
            group_id=topics.repartition_group_id,
            **kwargs,
        )
        self.metrics = metrics
        self.pseudonymize = pseudonymizer
        #: Next raw offset to copy, per assigned partition.
        self.positions: dict[TopicPartition, int] = {}

    async def assign_partition(self, tp: TopicPartition, start: int, point: CommitPoint | None) -> None:
        self.positions[tp] = start

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:  # a batch in flight is committed (or aborted) first
            for tp in revoked:
                self.positions.pop(tp, None)

    def key_of(self, value: bytes | None) -> bytes | None:
        """The subject's pseudonym; None (any partition) for a message naming nobody, which
        becomes a bad row wherever it lands."""
        subject = subject_key(value or b"")
        return None if subject is None else self.pseudonymize(subject.decode()).encode()

    async def handle(self, batches: Batches) -> None:
        """Copy a batch and commit its raw offsets in one checkpoint."""
        async with self.lock:
            records = [
                record
                for tp, batch in batches.items()
                if tp in self.positions
                for record in batch
                if record.offset >= self.positions[tp]
            ]
            if not records:
                return
            topic = self.settings.topics.by_subject_topic
            ends: dict[TopicPartition, int] = {}

            async def write(checkpoint: Checkpoint) -> dict[TopicPartition, int]:
                for record in records:
                    await checkpoint.produce(topic, record.value or b"", key=self.key_of(record.value))
                    ends[TopicPartition(record.topic, record.partition)] = record.offset + 1
                await checkpoint.commit({tp: CommitPoint(offset, None) for tp, offset in ends.items()})
                return ends

            if await self.in_transaction(write) is not None:
                self.positions.update(ends)
                self.metrics.repartitioned.inc(len(records))
