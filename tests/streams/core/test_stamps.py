"""The repartition stage's stamps and marks: each raw partition's watermark as ingest would
keep it had producers keyed the raw topic by subject, on a fake clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from agents.settings import Settings
from streams.core.stamps import RawProgress

NOW = datetime(2026, 11, 27, 10, 0, 40, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def page_view(event_id: str, second: int) -> bytes:
    return json.dumps(
        {
            "type": "page_view",
            "schema_version": "1-0-0",
            "event_id": event_id,
            "occurred_at": f"2026-11-27T10:00:{second:02d}Z",
            "page": {"path": "/"},
        }
    ).encode()


def progress(clock: FakeClock) -> RawProgress:
    policy = Settings.from_env(
        {"MKPI_INSECURE_DEV_MODE": "true", "MKPI_IDLE_TIMEOUT_SECONDS": "30"}
    ).ingest_policy
    return RawProgress(policy, clock=lambda: NOW, monotonic=clock)


def at(second: int) -> float:
    return NOW.replace(second=second).timestamp()


def test_each_message_is_stamped_with_its_partitions_watermark_before_it() -> None:
    raw = progress(FakeClock())
    raw.assign(0, None)
    raw.assign(1, at(5))
    payloads = [page_view("a", 20), b"{broken", page_view("b", 10), page_view("c", 30), None]
    assert raw.stamps(0, payloads) == [None, at(20), at(20), at(20), at(30)], "a bad row moves nothing"
    assert raw.stamps(1, [page_view("d", 1)]) == [at(5)], "from the committed watermark"
    assert raw.stamps(1, [page_view("e", 2)]) == [at(5)], "an older event does not move it back"


def test_marks_go_once_per_change_and_are_the_floor_of_later_stamps() -> None:
    clock = FakeClock()
    raw = progress(clock)
    raw.raw_partitions = 3
    raw.assign(0, None)
    raw.assign(1, None)
    assert raw.has_news() is False, "nothing to say: no watermark, not idle"
    raw.stamps(0, [page_view("a", 20)])
    marks = raw.marks()
    assert marks is not None and marks.raw_partitions == 3
    assert [(m.raw_partition, m.watermark, m.idle) for m in marks.marks] == [(0, at(20), False)]
    assert raw.marks() is None and not raw.has_news(), "unchanged: not sent again"
    assert raw.committed(0) == at(20)
    clock.now += 40  # partition 0 idle 10 s past the timeout, partition 1 idle without an event
    marks = raw.marks()
    assert marks is not None
    assert [(m.raw_partition, m.watermark, m.idle) for m in marks.marks] == [
        (0, at(30), True),
        (1, None, True),
    ]
    assert raw.stamps(0, [page_view("late", 25)]) == [at(30)], "no stamp below a mark sent"
    raw.forget_sent()
    assert raw.has_news(), "after an aborted transaction its marks go again"
