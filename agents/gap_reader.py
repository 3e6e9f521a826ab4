"""Reads a gap of a delta partition straight from Kafka, outside Faust's consumer."""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.settings import Settings

log = logging.getLogger(__name__)

#: How often a read that cannot reach the end of its gap says so.
STALL_REPORT_SECONDS = 30.0


class DeltaGapReader:
    """One unsubscribed ``read_committed`` consumer, created on first use: a gap holds only
    records of committed transactions, like everything the agent applies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self, partition: int, offsets: range) -> list[tuple[int, bytes | None]]:
        """The records at ``offsets`` (offset, value), in order. Its end is the offset of a
        committed record, so everything before it is decided and the read ends; while the
        broker does not answer it keeps trying and logs every ``STALL_REPORT_SECONDS``."""
        consumer = await self._started()
        tp = TopicPartition(self.settings.deltas_topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offsets.start)
        records: list[tuple[int, bytes | None]] = []
        report_at = time.monotonic() + STALL_REPORT_SECONDS
        while await consumer.position(tp) < offsets.stop:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records.extend((r.offset, r.value) for r in batch.get(tp, ()) if r.offset in offsets)
            if time.monotonic() > report_at:
                report_at = time.monotonic() + STALL_REPORT_SECONDS
                log.warning(
                    "still reading offsets %d-%d of delta partition %d back from Kafka",
                    offsets.start,
                    offsets.stop - 1,
                    partition,
                )
        return records

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                client_id=f"{self.settings.app_id}-gap-reader",
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
