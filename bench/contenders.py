"""The contenders that read a pre-loaded topic with the bare client, each run in a process of
its own so that its CPU time and peak memory are its own:

- ``a``: an aiokafka ``getmany`` loop that counts records: the Python client's ceiling;
- ``a2``: the same, plus typed decoding (the project's msgspec models) and a dict count per
  (type, channel, campaign): the ceiling for this workload in Python.

``python -m bench.contenders a|a2 BOOTSTRAP TOPIC COUNT`` prints ``{"events": n, "seconds": s}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

from aiokafka import AIOKafkaConsumer

from agents.settings import Settings
from streams.contracts.events import TYPE_NAMES
from streams.core.attribution import ChannelRules
from streams.core.validation import Rejection, decode_event

MAX_EVENT_BYTES = Settings().ingest.max_event_bytes  # the worker's default limit


async def consume(bootstrap: str, topic: str, count: int, decode: bool) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    rules = ChannelRules.load(None)
    counts: Counter[tuple[str, str, str]] = Counter()
    await consumer.start()
    try:
        seen = 0
        started = time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batches.values():
                seen += len(records)
                if decode:
                    for record in records:
                        event = decode_event(record.value or b"", MAX_EVENT_BYTES)
                        if isinstance(event, Rejection):
                            counts[("bad", "", "")] += 1
                            continue
                        attribution = rules.attribute(event)
                        counts[(TYPE_NAMES[type(event)], attribution.channel, attribution.campaign)] += 1
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"events": seen, "seconds": seconds, "keys": len(counts)}


def main() -> None:
    name, bootstrap, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    print(json.dumps(asyncio.run(consume(bootstrap, topic, count, decode=name == "a2"))))


if __name__ == "__main__":
    main()
