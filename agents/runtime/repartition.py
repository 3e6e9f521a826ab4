"""Repartitioning: the raw topic, keyed any way, copied to a topic keyed by subject.

Ingest keeps per-subject state with the partition that holds a subject's events, so every
event of a subject must reach one partition. When producers do not key the raw topic by
subject (``MKPI_RAW_KEYED_BY_SUBJECT=false``), this service copies each raw message unchanged
to ``<prefix>.raw-by-subject``, keyed by the pseudonym of its subject, and ingest counts from
there (as Kafka Streams repartitions before a stateful step). Each batch is copied and its raw
offsets committed in one checkpoint, on the same loop as ingest's flushes
(``agents.runtime.stage``), so every raw message is copied exactly once, in the order of its
raw partition. Each copy carries its raw partition and that partition's watermark before it,
and after each batch every partition of the copy gets the raw partitions' marks
(``streams.core.stamps``), so ingest judges lateness and holds windows by the raw partitions, as
it does when producers key the raw topic by subject.
"""

from __future__ import annotations

import logging

import msgspec
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from agents.kafka.checkpoint import Checkpoint
from agents.metrics.registry import Metrics
from agents.runtime.stage import Batches, TransactionalStage
from agents.settings import Settings
from streams.contracts.checkpoints import CommitPoint
from streams.contracts.repartition import MARKS_HEADER, RAW_PARTITION_HEADER, RAW_WATERMARK_HEADER
from streams.core.privacy import Pseudonymizer
from streams.core.stamps import RawProgress
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
        self.progress = RawProgress(settings.ingest_policy)
        self._copy_partitions = 0

    async def clients_started(self) -> None:
        topic = self.settings.topics.by_subject_topic
        self._copy_partitions = len(await self.producer.partitions_for(topic))

    async def assign_partition(self, tp: TopicPartition, start: int, point: CommitPoint | None) -> None:
        self.positions[tp] = start
        self.progress.assign(tp.partition, None if point is None else point.watermark)

    async def assigned(self, assigned: list[TopicPartition]) -> None:
        self.progress.raw_partitions = len(self.consumer.partitions_for_topic(self.topic) or ())

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:  # a batch in flight is committed (or aborted) first
            for tp in revoked:
                self.positions.pop(tp, None)
                self.progress.revoke(tp.partition)

    def aborted(self, error: KafkaError) -> None:
        self.progress.forget_sent()

    def key_of(self, value: bytes | None) -> bytes | None:
        """The subject's pseudonym; None (any partition) for a message naming nobody, which
        becomes a bad row wherever it lands."""
        subject = subject_key(value or b"")
        return None if subject is None else self.pseudonymize(subject.decode()).encode()

    async def handle(self, batches: Batches) -> None:
        """Copy a batch, stamped, then the raw partitions' marks to every partition of the copy,
        and commit the raw offsets with their watermarks, in one checkpoint. Without records,
        only marks that moved (an idle partition's) go."""
        async with self.lock:
            records = {
                tp: [record for record in batch if record.offset >= self.positions[tp]]
                for tp, batch in batches.items()
                if tp in self.positions
            }
            copied = sum(len(batch) for batch in records.values())
            if not copied and not self.progress.has_news():
                return
            topic = self.settings.topics.by_subject_topic
            ends: dict[TopicPartition, int] = {}

            async def write(checkpoint: Checkpoint) -> dict[TopicPartition, int]:
                for tp, batch in records.items():
                    if not batch:
                        continue
                    stamps = self.progress.stamps(tp.partition, [record.value for record in batch])
                    source = str(tp.partition).encode()
                    for record, stamp in zip(batch, stamps, strict=True):
                        headers = [
                            (RAW_PARTITION_HEADER, source),
                            (RAW_WATERMARK_HEADER, b"" if stamp is None else repr(stamp).encode()),
                        ]
                        value, key = record.value or b"", self.key_of(record.value)
                        await checkpoint.produce(topic, value, key=key, headers=headers)
                    ends[tp] = batch[-1].offset + 1
                marks = self.progress.marks()
                if marks is not None:
                    body = msgspec.json.encode(marks)
                    for partition in range(self._copy_partitions):
                        await checkpoint.produce(
                            topic, body, partition=partition, headers=[(MARKS_HEADER, b"1")]
                        )
                await checkpoint.commit(
                    {tp: CommitPoint(end, self.progress.committed(tp.partition)) for tp, end in ends.items()}
                )
                return ends

            if await self.in_transaction(write) is not None:
                self.positions.update(ends)
                self.metrics.repartitioned.inc(copied)
