"""The KPI agent's Kafka sink (``streams.core.emission``): the KPI table's changelog writes, KPI
updates, window results and alerts, one batch per topic.

Every output of a delta message goes to the output partition of the message's delta
partition: all series of a (channel, campaign) live on one delta partition, so each KPI key
always lands on the same output partition (compaction and "latest per key" hold), and the
outputs of a whole delta message make one produce request per topic. The table's changelog has
as many partitions as the delta topic, so a delta partition's table writes land where Faust
recovers that partition's table from.

The sink's own aiokafka producer builds those batches; Faust's producer sends one message at a
time. ``emit`` returns once the broker has acknowledged every batch, so a delta message only
counts as processed (and its offset as committable) after its outputs are durable.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from agents.kafka.connections import kafka_options
from agents.settings import Settings
from streams.core.emission import Emission

#: Produce batches up to this size; a delta message's outputs are a few hundred kilobytes.
MAX_BATCH_BYTES = 1024 * 1024

#: (topic, key, value); a None value is a changelog tombstone.
OutputMessage = tuple[str, bytes, bytes | None]


class KafkaOutputs:
    def __init__(self, settings: Settings, changelog_topic: str) -> None:
        self.settings = settings
        self.changelog_topic = changelog_topic
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, int] = {}
        #: The offset of the last changelog record the last ``emit`` wrote (None: it wrote none).
        self.changelog_end: int | None = None

    async def start(self) -> None:
        """Made inside the worker's event loop, which the client binds to."""
        self._producer = AIOKafkaProducer(
            **kafka_options(self.settings),
            client_id=f"{self.settings.topics.app_id}-kpi-outputs",
            acks="all",
            enable_idempotence=True,
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=MAX_BATCH_BYTES,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def emit(self, emission: Emission) -> None:
        topics = self.settings.topics
        messages: list[OutputMessage] = [
            (self.changelog_topic, key, value) for key, value in emission.table_changes.items()
        ]
        for encoded in emission.updates:
            raw_key = encoded.key.encode()
            messages.append((topics.kpi_updates_topic, raw_key, encoded.body))
            if encoded.update.final:
                messages.append((topics.window_results_topic, raw_key, encoded.body))
        messages += [(topics.alerts_topic, key, body) for key, body in emission.alerts]
        await self._publish(emission.delta_partition, messages)

    async def _publish(self, delta_partition: int, messages: list[OutputMessage]) -> None:
        """Send ``messages`` (topic, key, value), in order per topic, and wait for the acks."""
        producer = self._producer
        assert producer is not None, "start() the Kafka outputs first"
        by_topic: defaultdict[str, list[tuple[bytes, bytes | None]]] = defaultdict(list)
        for topic, key, value in messages:
            by_topic[topic].append((key, value))
        sent: list[asyncio.Future[Any]] = []
        #: (the delivery of a changelog batch, its records)
        changelog: list[tuple[asyncio.Future[Any], int]] = []

        async def send(batch: BatchBuilder, topic: str, partition: int) -> None:
            count = batch.record_count()
            sent.append(await producer.send_batch(batch, topic, partition=partition))
            if topic == self.changelog_topic:
                changelog.append((sent[-1], count))

        for topic, records in by_topic.items():
            partition = delta_partition % await self._partition_count(topic)
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    await send(batch, topic, partition)
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a message for {topic} is larger than {MAX_BATCH_BYTES} bytes")
            if batch.record_count():
                await send(batch, topic, partition)
        await asyncio.gather(*sent)
        self.changelog_end = None
        if changelog:
            delivery, count = changelog[-1]
            self.changelog_end = delivery.result().offset + count - 1

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            assert self._producer is not None
            count = self._partitions[topic] = len(await self._producer.partitions_for(topic))
        return count
