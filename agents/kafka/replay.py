"""Bad rows sent again, once: after their cause was fixed (a rules or schema change, a limit
raised), the bad rows of one reason go back where they were read from.

Each row's payload returns to the topic and partition it came from (the raw topic, or its copy
keyed by subject), so it reaches the partition that holds its subject's state. The replay reads
``<prefix>.bad-rows`` committed, as the member of a group of its own per reason
(``<prefix>-replay-<reason>``), and sends each batch and commits the group's offsets in one
transaction: a replay interrupted anywhere resumes after the last batch it sent, and a second
replay of the same reason sends only rows newer than the first one's. Identifiers in the
payloads were pseudonymized when they were kept, and ingest keeps a pseudonym as it is, so a
replayed event counts for the same visitor, session and recipient as the original would have.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from agents.kafka.connections import kafka_options
from agents.kafka.topics import topic_partitions
from agents.settings import Settings
from streams.contracts.outputs import BadReason, BadRow
from streams.core.subjects import subject_key
from streams.core.validation import payload_of

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(BadRow)


@dataclass
class ReplayReport:
    """What one replay did with the bad rows it read."""

    #: Rows of the reason sent again, by the topic they went to.
    replayed: Counter[str] = field(default_factory=Counter)
    #: Rows of the reason not sent, by why.
    skipped: Counter[str] = field(default_factory=Counter)
    #: Rows of other reasons passed over.
    other_reasons: int = 0


async def replay_bad_rows(settings: Settings, reason: BadReason, dry_run: bool = False) -> ReplayReport:
    """Send the bad rows of ``reason`` not replayed yet back to their source partitions (only
    count them with ``dry_run``), up to the end of the bad-row topic as it stands now."""
    topics = settings.topics
    group = f"{topics.topic_prefix}-replay-{reason.value}"
    sources = {topics.raw_topic, topics.by_subject_topic}
    consumer = AIOKafkaConsumer(
        **kafka_options(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(**kafka_options(settings), transactional_id=group, enable_idempotence=True)
    report = ReplayReport()
    await consumer.start()
    await producer.start()
    try:
        partitions = [
            TopicPartition(topics.bad_rows_topic, p)
            for p in await topic_partitions(settings, topics.bad_rows_topic)
        ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        for tp in partitions:
            start = committed[tp]
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            sends: list[tuple[str, int, bytes]] = []
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    offsets[tp] = OffsetAndMetadata(record.offset + 1, "")
                    try:
                        row = _decoder.decode(record.value or b"")
                    except msgspec.DecodeError:
                        report.skipped["unreadable bad row"] += 1
                        continue
                    if row.reason is not reason:
                        report.other_reasons += 1
                        continue
                    payload = payload_of(row)
                    if payload is None:
                        report.skipped["payload cut to its first bytes (too_large)"] += 1
                    elif row.source_topic not in sources:
                        report.skipped[f"read from {row.source_topic}, not this pipeline's raw topics"] += 1
                    else:
                        sends.append((row.source_topic, row.source_partition, payload))
            if dry_run:
                report.replayed.update(topic for topic, _, _ in sends)
                continue
            if not offsets:
                continue
            async with producer.transaction():
                deliveries = [
                    await producer.send(topic, payload, key=subject_key(payload), partition=partition)
                    for topic, partition, payload in sends
                ]
                await asyncio.gather(*deliveries)
                await producer.send_offsets_to_transaction(offsets, group)
            report.replayed.update(topic for topic, _, _ in sends)
    finally:
        await producer.stop()
        await consumer.stop()
    return report
