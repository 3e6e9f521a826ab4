"""Reading a topic as a downstream developer would (``mkpi tail``): its committed messages,
decoded, one line each, from its end (or its start) on, optionally only those whose key holds a
text."""

from __future__ import annotations

import json
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.kafka.connections import kafka_options
from agents.kafka.topics import topic_partitions
from agents.settings import Settings


def line_of(partition: int, offset: int, key: bytes | None, value: bytes | None) -> str:
    """``partition:offset key value``: the key as text, the value as compact JSON when it is."""
    shown_key = "-" if key is None else key.decode(errors="replace")
    if value is None:
        shown_value = "(tombstone)"
    else:
        try:
            shown_value = json.dumps(json.loads(value), separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            shown_value = value.decode(errors="replace")
    return f"{partition}:{offset} {shown_key} {shown_value}"


async def tail(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool,
    to_end: bool,
    key_filter: str | None,
    count: int | None,
    out: Callable[[str], None],
) -> int:
    """Print the topic's committed messages (read_committed) from its end, or its start; stop
    after ``count`` printed, or (``to_end``) at the end as it was when reading began, else
    follow. Returns how many were printed."""
    tps = [TopicPartition(topic, p) for p in await topic_partitions(settings, topic)]
    consumer = AIOKafkaConsumer(
        **kafka_options(settings), enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    printed = 0
    try:
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        ends = await consumer.end_offsets(tps)
        while count is None or printed < count:
            if to_end and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in sorted(batches.items()):
                for record in records:
                    if key_filter is not None and key_filter not in (record.key or b"").decode(
                        errors="replace"
                    ):
                        continue
                    out(line_of(tp.partition, record.offset, record.key, record.value))
                    printed += 1
                    if count is not None and printed >= count:
                        return printed
    finally:
        await consumer.stop()
    return printed
