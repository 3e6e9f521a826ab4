"""Contender Q: the peer a Python user would pick instead, Quix Streams, doing far less than C.

A 1-minute tumbling count per (type, campaign) on the raw topic: ``group_by`` repartitions by
that key (Quix windows are per message key), then a windowed ``count`` in its RocksDB state with
changelog topics, as Quix ships it. Malformed messages are skipped. It runs in a virtualenv of
its own (``bench/quix.lock``, made by ``bench.peers``), so it imports nothing of the project.

``python -m bench.quix_contender BOOTSTRAP TOPIC COUNT`` prints ``{"events": n, "seconds": s}``:
from the first raw message to the last window update, once updates have stopped.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import Count

#: Updates stop for this long: the run is over.
QUIET_SECONDS = 5.0


def main() -> None:
    bootstrap, topic_name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    progress = {"first": 0.0, "last": 0.0, "updates": 0, "raw": 0}

    def skip_malformed(exc: Exception, message: Any, logger: logging.Logger) -> bool:
        return True  # a message that does not decode is skipped, as C makes it a bad row

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        on_consumer_error=skip_malformed,
        on_processing_error=skip_malformed,
        loglevel="WARNING",
    )
    topic = app.topic(topic_name, value_deserializer="json")
    frame = app.dataframe(topic)

    def arrived(value: Any) -> None:
        if not progress["first"]:
            progress["first"] = time.perf_counter()
        progress["raw"] += 1

    def key_of(value: Any) -> str:
        utm = value.get("utm") if isinstance(value, dict) else None
        campaign = utm.get("campaign") if isinstance(utm, dict) else None
        return f"{value.get('type')}|{campaign or '(none)'}" if isinstance(value, dict) else "?"

    def counted(value: Any) -> None:
        progress["updates"] += 1
        progress["last"] = time.perf_counter()

    frame = frame.update(arrived)
    frame = frame.group_by(key_of, name="type_campaign")
    frame = frame.tumbling_window(duration_ms=60_000).agg(events=Count()).current()
    frame = frame.update(counted)

    def watch() -> None:
        while True:
            time.sleep(1)
            last = progress["last"]
            if last and time.perf_counter() - last > QUIET_SECONDS:
                app.stop()
                return

    threading.Thread(target=watch, daemon=True).start()
    app.run()
    seconds = progress["last"] - progress["first"]
    print(
        json.dumps(
            {"events": count, "seconds": seconds, "updates": progress["updates"], "raw": progress["raw"]}
        )
    )


if __name__ == "__main__":
    main()
