"""Reads a gap of a delta partition straight from Kafka, outside Faust's consumer."""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.kafka.connections import kafka_options
from agents.settings import Settings

log = logging.getLogger(__name__)

#: How long the broker may hold a fetch of a gap waiting for more data. A gap ends at a
#: committed record, so the data is there; with aiokafka's 500 ms a tenth of the reads took
#: about 200 ms, and at 300 events/s those were most of the time from a delta to its KPI update.
GAP_FETCH_MAX_WAIT_MS = 10
#: How often a read that cannot reach the end of its gap says so.
STALL_REPORT_SECONDS = 30.0

Record = tuple[int, bytes | None]


@dataclass(slots=True)
class _Known:
    """Offsets ``start`` to ``stop`` (exclusive) of a partition as one read found them: the
    records there, in offset order; every other offset in the span holds none."""

    start: int
    stop: int
    records: list[Record]

    def covers(self, offsets: range) -> bool:
        return self.start <= offsets.start and offsets.stop <= self.stop

    def within(self, offsets: range) -> list[Record]:
        first = bisect.bisect_left(self.records, offsets.start, key=lambda record: record[0])
        last = bisect.bisect_left(self.records, offsets.stop, key=lambda record: record[0])
        return self.records[first:last]


class DeltaGapReader:
    """One unsubscribed ``read_committed`` consumer, created on first use: a gap holds only
    records of committed transactions, like everything the agent applies.

    A fetch returns what follows the gap too, and the agent meets most gaps (transaction
    markers) a little further on, so each partition's last read is kept and answers the gaps
    it spans without going back to the broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._known: dict[int, _Known] = {}

    async def read(self, partition: int, offsets: range) -> list[Record]:
        """The records at ``offsets`` (offset, value), in order. The range ends at a committed
        record, so everything in it is decided and the read ends; while the broker does not
        answer it keeps trying and logs every ``STALL_REPORT_SECONDS``."""
        known = self._known.get(partition)
        if known is None or not known.covers(offsets):
            known = self._known[partition] = await self._fetch(partition, offsets)
        return known.within(offsets)

    async def _fetch(self, partition: int, offsets: range) -> _Known:
        consumer = await self._started()
        tp = TopicPartition(self.settings.topics.deltas_topic, partition)
        assigned = consumer.assignment()
        if tp not in assigned:
            # Assigning logs at INFO, and a worker reads a gap about once per delta message
            # (most are transaction markers): each partition is assigned once, and only the
            # one being read is left unpaused, so the others are not fetched meanwhile.
            consumer.assign([*assigned, tp])
        consumer.pause(*(other for other in consumer.assignment() if other != tp))
        consumer.resume(tp)
        consumer.seek(tp, offsets.start)
        records: list[Record] = []
        report_at = time.monotonic() + STALL_REPORT_SECONDS
        while (position := await consumer.position(tp)) < offsets.stop:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records.extend((r.offset, r.value) for r in batch.get(tp, ()) if r.offset >= offsets.start)
            if time.monotonic() > report_at:
                report_at = time.monotonic() + STALL_REPORT_SECONDS
                log.warning(
                    "still reading offsets %d-%d of delta partition %d back from Kafka",
                    offsets.start,
                    offsets.stop - 1,
                    partition,
                )
        # Paused between reads: a resumed partition keeps a fetch outstanding at the log's end,
        # which the next read's seek had to wait for (up to 200 ms in the measurements).
        consumer.pause(tp)
        return _Known(offsets.start, position, records)

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **kafka_options(self.settings),
                client_id=f"{self.settings.topics.app_id}-gap-reader",
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                fetch_max_wait_ms=GAP_FETCH_MAX_WAIT_MS,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        self._known.clear()
