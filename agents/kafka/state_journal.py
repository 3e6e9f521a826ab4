"""The ingest state journal on Kafka: encoding its records, and restoring a partition's state.

Flushes write the records (``streams.core.subject_state``) in their transaction; a worker that
takes over a partition folds the committed records from the newest snapshot to the end, which
is the state as of the partition's committed offset.
"""

from __future__ import annotations

import logging
import time

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.errors import KafkaError

from agents.kafka.connections import kafka_options
from agents.settings import Settings
from streams.contracts.journal import JournalRecord
from streams.core.subject_state import PartitionState

log = logging.getLogger(__name__)

#: How often a restore that cannot reach the end of its partition says so.
STALL_REPORT_SECONDS = 30.0

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JournalRecord)


def encode_record(record: JournalRecord) -> bytes:
    return _encoder.encode(record)


class StateJournal:
    """Restores partitions' state from the journal topic with one unsubscribed
    ``read_committed`` consumer (records of aborted flushes are never folded), and drops the
    records a newer snapshot has made unnecessary."""

    def __init__(self, settings: Settings, admin: AIOKafkaAdminClient) -> None:
        self.settings = settings
        self.topic = settings.topics.state_journal_topic
        self.admin = admin
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

    async def restore(self, partition: int, state_from: int | None, state_to: int | None) -> PartitionState:
        """The state of ``partition`` as the journal has it: its committed records from
        ``state_from`` (the newest snapshot; None: the start of the log) up to ``state_to``
        (the end of the last committed flush's records; None: the end of the log), folded.
        The read waits for ``state_to``: the flush's offsets can be visible before the
        transaction marker of its journal records is written."""
        consumer = self._consumer
        assert consumer is not None, "StateJournal.start() first"
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        stop = (await consumer.end_offsets([tp]))[tp] if state_to is None else state_to
        start = begin if state_from is None else state_from
        if start < begin:
            log.error(
                "the state journal of partition %d begins at offset %d, after the snapshot at %d "
                "that restoring needs: something deleted its records (retention.ms of %s must "
                "stay -1). Dedup, distinct counts and sessions of this partition restart from "
                "what is left, and may count some events, sessions or opens again.",
                partition,
                begin,
                start,
                self.topic,
            )
            start = begin
        state = PartitionState(snapshot_after_entries=self.settings.ingest.state_snapshot_entries)
        started, read = time.monotonic(), 0
        report_at = started + STALL_REPORT_SECONDS
        consumer.seek(tp, start)
        while start < stop and await consumer.position(tp) < stop:
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
            read += len(records)
            state.fold(records)
            if time.monotonic() > report_at:
                report_at = time.monotonic() + STALL_REPORT_SECONDS
                log.warning(
                    "still restoring partition %d's state: at offset %d of %d-%d",
                    partition,
                    await consumer.position(tp),
                    start,
                    stop,
                )
        state.snapshot_offset, state.journal_end = state_from, state_to
        log.info(
            "restored the state of partition %d from the journal: %d records (offsets %d-%d), "
            "%d entries, in %.1f s",
            partition,
            read,
            start,
            stop,
            len(state),
            time.monotonic() - started,
        )
        return state

    async def drop_before(self, partition: int, offset: int) -> None:
        """Delete the records before a committed snapshot (none of them is read again); a
        failure only leaves them for the next snapshot to delete."""
        try:
            await self.admin.delete_records({TopicPartition(self.topic, partition): RecordsToDelete(offset)})
        except KafkaError as exc:
            log.warning("could not delete state journal records before %d/%d: %r", partition, offset, exc)
