"""The ingest state journal on Kafka: encoding its records, and reading them back.

Flushes write the records (``streams.core.subject_state``) in their transaction; a worker that
takes a partition over reads the committed records its store on disk lacks
(``agents.runtime.partition_state``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.errors import KafkaError

from agents.kafka.connections import kafka_options
from agents.settings import Settings
from streams.contracts.journal import JournalRecord

log = logging.getLogger(__name__)

#: How often a restore says how far it got.
PROGRESS_SECONDS = 5.0

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JournalRecord)


def encode_record(record: JournalRecord) -> bytes:
    return _encoder.encode(record)


class StateJournal:
    """Restores partitions' state from the journal topic with one unsubscribed
    ``read_committed`` consumer (records of aborted flushes are never folded), and drops the
    records a newer snapshot has made unnecessary."""

    def __init__(
        self,
        settings: Settings,
        admin: AIOKafkaAdminClient,
        progress: Callable[[int, int], None] = lambda partition, remaining: None,
    ) -> None:
        self.settings = settings
        self.topic = settings.topics.state_journal_topic
        self.admin = admin
        #: Told (partition, records left to read) as a restore goes.
        self.progress = progress
        #: The offsets the last ``read`` covered: [start, stop).
        self.span = (0, 0)
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **kafka_options(self.settings),
            client_id=f"{self.settings.topics.app_id}-state-journal",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def read(
        self, partition: int, read_from: int | None, read_to: int | None
    ) -> AsyncIterator[list[JournalRecord]]:
        """The committed records of ``partition`` from ``read_from`` (None: the log's start) up
        to ``read_to`` (None: the log's end as it is now), in the batches fetched; waits for
        ``read_to``. Says how many are left (``progress``) as it goes, and logs it every few seconds."""
        consumer = self._consumer
        assert consumer is not None, "StateJournal.start() first"
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        stop = (await consumer.end_offsets([tp]))[tp] if read_to is None else read_to
        start = begin if read_from is None else read_from
        if start < begin:
            log.error(
                "the state journal of partition %d begins at offset %d, after the record %d "
                "that restoring needs: something deleted its records (retention.ms of %s must "
                "stay -1). Dedup, distinct counts and sessions of this partition restart from "
                "what is left, and may count some events, sessions or opens again.",
                partition,
                begin,
                start,
                self.topic,
            )
            start = begin
        self.span = (start, stop)
        report_at = time.monotonic() + PROGRESS_SECONDS
        consumer.seek(tp, start)
        position = start
        self.progress(partition, max(0, stop - position))
        while position < stop:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records = []
            for message in batch.get(tp, ()):
                if message.offset >= stop:
                    break  # written by a flush whose offsets were not committed
                try:
                    records.append(_decoder.decode(message.value or b""))
                except msgspec.DecodeError as exc:
                    log.error(
                        "state journal record %d/%d is unreadable (%s) and is skipped: was the "
                        "topic written by another program?",
                        partition,
                        message.offset,
                        exc,
                    )
            yield records
            position = await consumer.position(tp)
            self.progress(partition, max(0, stop - position))
            if time.monotonic() > report_at:
                report_at = time.monotonic() + PROGRESS_SECONDS
                log.info(
                    "restoring partition %d's state: %d of %d journal records read",
                    partition,
                    min(position, stop) - start,
                    stop - start,
                )
        self.progress(partition, 0)

    async def drop_before(self, partition: int, offset: int) -> None:
        """Delete the records before a committed snapshot (none of them is read again); a
        failure only leaves them for the next snapshot to delete."""
        try:
            await self.admin.delete_records({TopicPartition(self.topic, partition): RecordsToDelete(offset)})
        except KafkaError as exc:
            log.warning("could not delete state journal records before %d/%d: %r", partition, offset, exc)
