"""Contender B: the naive Faust design, every raw event through a Faust stream.

One agent reads the raw topic; per event it decodes and attributes it (the project's own code,
as A2 does) and adds each measure the event contributes to a tumbling one-minute windowed
table keyed by (measure, channel, campaign): one windowed-table update per event and measure,
with its changelog. No dedup, closing or outputs: it is cheaper than C's job, which is the point
of comparing with it.

``python -m bench.naive_faust BOOTSTRAP TOPIC COUNT`` prints ``{"events": n, "seconds": s}``
once ``COUNT`` events went through, and exits.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import faust

from agents.settings import Settings
from streams.core.attribution import ChannelRules
from streams.core.catalog import measures_of
from streams.core.validation import Rejection, decode_event

MAX_EVENT_BYTES = Settings().ingest.max_event_bytes  # the worker's default limit


def build(bootstrap: str, topic: str, count: int) -> faust.App:
    app = faust.App(
        f"bench-naive-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="bench-naive-"),
        topic_partitions=3,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    raw = app.topic(topic, key_type=bytes, value_type=bytes)
    table = app.Table("measures", default=int, key_type=str, value_type=int).tumbling(60, expires=3600)
    rules = ChannelRules.load(None)
    progress: dict[str, Any] = {"events": 0, "started": None}

    @app.agent(raw)
    async def count_measures(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            if progress["started"] is None:
                progress["started"] = time.perf_counter()
            event = decode_event(value or b"", MAX_EVENT_BYTES)
            if not isinstance(event, Rejection):
                attribution = rules.attribute(event)
                for measure, amount in measures_of(event, attribution, "/blog/", False):
                    key = f"{measure}|{attribution.channel}|{attribution.campaign}"
                    table[key] += amount
            progress["events"] += 1
            if progress["events"] >= count:
                seconds = time.perf_counter() - progress["started"]
                # Faust's worker sends sys.stdout to its log: write to the descriptor itself
                result = json.dumps({"events": progress["events"], "seconds": seconds})
                os.write(1, f"\n{result}\n".encode())
                os._exit(0)  # the measurement is taken; Faust's orderly shutdown is not part of it

    return app


def main() -> None:
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logging.basicConfig(level=logging.WARNING)
    app = build(bootstrap, topic, count)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
