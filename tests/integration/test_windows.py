"""Window life cycle on the real broker, step by step: closing on event time with idle
partitions, a revision for a late event, and an event past retention."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from agents.kafka.connections import kafka_options
from agents.kafka.topics import ensure_topics
from agents.settings import Settings
from tests.support import WorkerProcess, isolated_settings, read_everything, wait_for_accounting

pytestmark = pytest.mark.kafka


def page_view(event_id: str, at: float) -> bytes:
    occurred = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"
    event = {
        "type": "page_view",
        "schema_version": "1-0-0",
        "event_id": event_id,
        "occurred_at": occurred,
        "anonymous_id": f"visitor-{event_id}",
        "session_id": f"session-{event_id}",
        "utm": {"source": "google", "medium": "organic", "campaign": "probe"},
        "page": {"path": "/"},
    }
    return json.dumps(event).encode()


async def send_to_partition(settings: Settings, payloads: list[bytes], partition: int = 0) -> None:
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
    await producer.start()
    try:
        for payload in payloads:
            await producer.send_and_wait(settings.topics.raw_topic, payload, partition=partition)
    finally:
        await producer.stop()


async def results(settings: Settings, kpi: str, start: int) -> list[dict[str, Any]]:
    key = ["page_views" if kpi == "page_views" else kpi, 60, start, "*", "*"]
    return [
        json.loads(record.value)
        for record in await read_everything(settings, [settings.topics.window_results_topic])
        if json.loads(record.key) == key
    ]


async def wait_for_results(
    settings: Settings, start: int, count: int, timeout: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found = await results(settings, "page_views", start)
    while len(found) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        found = await results(settings, "page_views", start)
    return found


async def test_windows_close_on_event_time_revise_and_report_late_events(tmp_path: Path) -> None:
    settings = isolated_settings(
        window_sizes="60",
        grace_seconds=5,
        window_retention_seconds=120,
        idle_timeout_seconds=3,
        alert_rules_file="none",  # the shipped rules watch hour and day windows
    )
    first = (int(time.time()) // 60 - 10) * 60  # ten minutes ago: window A
    await ensure_topics(settings)
    # Only raw partition 0 has data; 1 and 2 never do, and count as idle after 3 s.
    await send_to_partition(
        settings,
        [page_view("a1", first + 10), page_view("a2", first + 20), page_view("b1", first + 70)],
    )
    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        await wait_for_accounting(settings, 3, timeout=60)
        [final] = await wait_for_results(settings, first, 1, timeout=30)
        assert (final["numerator"], final["final"], final["revision"]) == (2, True, 0)
        # Window B, the next minute, holds the newest event: event time has not passed its end
        # + grace, so it stays open although the wall clock has (idle partition 0 only moves
        # its watermark one second per second past the idle timeout: B closes ~55 s from now).
        assert await results(settings, "page_views", first + 60) == []

        # A late event within retention revises A; one past retention is reported late.
        await send_to_partition(settings, [page_view("a3", first + 30), page_view("old", first - 300)])
        totals = await wait_for_accounting(settings, 5, timeout=60)
        assert totals["outcomes"] == {"valid": 4, "late": 1}
        revised = await wait_for_results(settings, first, 2, timeout=30)
        assert [(r["revision"], r["numerator"]) for r in revised] == [(0, 2), (1, 3)]
        [late] = [
            json.loads(r.value) for r in await read_everything(settings, [settings.topics.late_events_topic])
        ]
        assert (late["source_partition"], late["missed_window_seconds"], late["counted_window_seconds"]) == (
            0,
            [60],
            [],
        )
    finally:
        worker.stop()


async def latest_numerator(settings: Settings, key: list[Any], expected: int, timeout: float) -> int | None:
    """The newest numerator of a KPI key on the update topic, once it is ``expected`` (or time
    runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            json.loads(record.value)["numerator"]
            for record in await read_everything(settings, [settings.topics.kpi_updates_topic])
            if json.loads(record.key) == key
        ]
        newest = found[-1] if found else None
        if newest == expected or time.monotonic() > deadline:
            return newest
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("keyed_by_subject", [True, False], ids=["keyed", "repartitioned"])
async def test_a_raw_partition_an_hour_behind_holds_its_windows_on_both_paths(
    tmp_path: Path, keyed_by_subject: bool
) -> None:
    """Raw partition 1 lags an hour behind raw partition 0. Its events count in their windows
    whether producers key by subject or ingest repartitions by subject first: through the
    repartition they used to share partitions with partition 0's events, whose event time
    made them late."""
    settings = isolated_settings(
        window_sizes="60",
        grace_seconds=5,
        window_retention_seconds=120,
        idle_timeout_seconds=120,
        partitions=2,
        raw_keyed_by_subject=keyed_by_subject,
        alert_rules_file="none",
    )
    behind = (int(time.time()) // 60 - 120) * 60  # two hours ago
    ahead = behind + 3600
    await ensure_topics(settings)
    await send_to_partition(settings, [page_view("lag-0", behind + 1)], partition=1)
    await send_to_partition(settings, [page_view(f"now-{i}", ahead + 5 * i) for i in range(10)], partition=0)
    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        await wait_for_accounting(settings, 11, timeout=60)
        await send_to_partition(
            settings, [page_view(f"lag-{i}", behind + 1 + 5 * i) for i in range(1, 10)], partition=1
        )
        totals = await wait_for_accounting(settings, 20, timeout=60)
        assert totals["outcomes"] == {"valid": 20}, worker.log_tail()
        assert await read_everything(settings, [settings.topics.late_events_topic]) == []
        for start in (behind, ahead):
            assert await latest_numerator(settings, ["page_views", 60, start, "*", "*"], 10, timeout=30) == 10
    finally:
        worker.stop()
