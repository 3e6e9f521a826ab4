"""What a batch commits, and in which order: its outputs, then its input offsets, in one Kafka
transaction.

Both stages that read a topic and write others exactly once go through here: ingest (deltas,
bad rows, late events, its report and the state journal) and the repartition stage (copies of
raw messages). A ``Checkpoint`` is one transaction's writes. Its offsets go last, with their
metadata (``streams.contracts.checkpoints.CommitPoint``), and only after the broker has
acknowledged every output: aiokafka commits a transaction even when one of its sends failed.
The offsets are fenced by the consumer's group membership (``agents.kafka.fencing``), so a
worker that lost its partitions cannot commit a batch that their new owner reads again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from agents.kafka.fencing import FencedTransactionalProducer, membership
from agents.kafka.state_journal import encode_record
from agents.settings import TopicSettings
from streams.contracts.checkpoints import CommitPoint
from streams.contracts.outputs import IngestReport
from streams.core.aggregation import delta_batches
from streams.core.ingestor import Flushable, RawPartition

#: How long a stage waits to read on after a topic refused one of its messages.
REFUSED_RETRY_SECONDS = 5.0

_encoder = msgspec.json.Encoder()


class OutputRefused(KafkaError):  # type: ignore[misc]
    """A topic refused a message of a checkpoint; the transaction is aborted and its input read
    again."""

    def __init__(self, topic: str, writer: str, error: Exception) -> None:
        hint = (
            " It is larger than the topic takes: raise the topic's max.message.bytes (or the "
            "broker's message.max.bytes)."
            if isinstance(error, MessageSizeTooLargeError | RecordListTooLargeError)
            else ""
        )
        super().__init__(
            f"{topic} refused a message from {writer} ({error!r}).{hint} Nothing of this batch is "
            f"committed; it is retried every {REFUSED_RETRY_SECONDS:.0f} s."
        )
        self.topic = topic


class Checkpoint:
    """The writes of one open transaction: ``produce`` the outputs, then ``commit`` the input
    offsets they were made from. ``writer`` names the stage in errors."""

    def __init__(
        self, producer: FencedTransactionalProducer, consumer: AIOKafkaConsumer, group_id: str, writer: str
    ) -> None:
        self.writer = writer
        self.producer = producer
        self.consumer = consumer
        self.group_id = group_id
        self._deliveries: list[tuple[str, asyncio.Future[Any]]] = []

    async def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Send one output; its delivery is awaited by ``commit``."""
        try:
            delivery: asyncio.Future[Any] = await self.producer.send(
                topic, value=value, key=key, partition=partition, headers=headers
            )
        except KafkaError as exc:  # refused before sending (larger than max_request_size)
            raise OutputRefused(topic, self.writer, exc) from exc
        self._deliveries.append((topic, delivery))
        return delivery

    async def delivered(self) -> None:
        """Wait until the broker has every output produced so far (each is awaited once);
        OutputRefused for the first it refused."""
        deliveries, self._deliveries = self._deliveries, []
        outcomes = await asyncio.gather(*(delivery for _, delivery in deliveries), return_exceptions=True)
        for (topic, _), outcome in zip(deliveries, outcomes, strict=True):
            if isinstance(outcome, KafkaError):
                raise OutputRefused(topic, self.writer, outcome) from outcome
            if isinstance(outcome, BaseException):
                raise outcome

    async def commit(self, points: Mapping[TopicPartition, CommitPoint]) -> None:
        """Once every output is written: the input offsets, with their metadata, in the
        transaction. Refused (and the whole transaction aborted) if this worker is no longer the
        partitions' owner."""
        await self.delivered()
        if points:
            await self.producer.send_offsets_to_transaction(
                {tp: point.as_commit() for tp, point in points.items()},
                membership(self.consumer, self.group_id),
            )


async def checkpoint_flush(
    checkpoint: Checkpoint,
    pending: Flushable,
    topics: TopicSettings,
    delta_partitions: int,
    report: IngestReport | None,
) -> dict[RawPartition, CommitPoint]:
    """Ingest's flush, in order: the state journal's records (first, so their offsets are known
    when the commit points are), the deltas and marks in a few messages per delta partition
    (``delta_batches``), bad rows, late events and the report; then the offsets. Returns the
    commit points as committed, with where each partition's journal now stands."""
    journal: dict[RawPartition, tuple[asyncio.Future[Any], asyncio.Future[Any]]] = {}
    for tp, changes in pending.journal.items():
        first = last = None
        for record in changes.records:
            last = await checkpoint.produce(
                topics.state_journal_topic, encode_record(record), partition=tp.partition
            )
            first = first or last
            changes.sent += 1
        if first is not None and last is not None:
            journal[tp] = (first, last)
    encode = _encoder.encode
    for partition, batch in delta_batches(pending.deltas, pending.marks, delta_partitions):
        await checkpoint.produce(topics.deltas_topic, encode(batch), partition=partition)
    for bad_row in pending.bad_rows:
        await checkpoint.produce(topics.bad_rows_topic, encode(bad_row))
    for late in pending.late_events:
        await checkpoint.produce(topics.late_events_topic, encode(late))
    if report is not None:
        await checkpoint.produce(topics.accounting_topic, encode(report))
    await checkpoint.delivered()  # the journal's offsets are known from here on
    points = dict(pending.commits)
    for tp, (first, last) in journal.items():
        changes = pending.journal[tp]
        changes.first_offset = first.result().offset
        point = points[tp]
        snapshot = changes.snapshot_from
        points[tp] = dataclasses.replace(
            point,
            state_from=point.state_from if snapshot is None else snapshot,
            state_to=last.result().offset + 1,
        )
    await checkpoint.commit({TopicPartition(*tp): point for tp, point in points.items()})
    return points
