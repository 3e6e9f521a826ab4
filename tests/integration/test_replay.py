"""Bad rows sent again once their cause is fixed: counted once, for the same subjects."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agents.kafka.replay import replay_bad_rows
from agents.kafka.topics import ensure_topics
from streams.contracts.outputs import BadReason
from tests.integration.test_kpi_exactness import day_zone_with_midnight_hours_ago
from tests.support import WorkerProcess, isolated_settings, produce, read_everything, wait_for_accounting

pytestmark = pytest.mark.kafka


def event(kind: str, event_id: str, minutes_ago: int, **fields: Any) -> bytes:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    body = {
        "type": kind,
        "schema_version": "1-0-0",
        "event_id": event_id,
        "occurred_at": at.isoformat(),
        **fields,
    }
    return json.dumps(body).encode()


async def day_values(settings: Any, kpi: str, channel: str) -> dict[int, tuple[int, int | None]]:
    """The newest (numerator, denominator) of a KPI's day windows, by window start."""
    values: dict[int, tuple[int, int | None]] = {}
    for record in await read_everything(settings, [settings.topics.kpi_updates_topic]):
        name, size, start, cell_channel, campaign = json.loads(record.key)
        if (name, size, cell_channel, campaign) == (kpi, 86400, channel, "*"):
            update = json.loads(record.value)
            values[start] = (update["numerator"], update["denominator"])
    return values


async def test_rows_of_a_fixed_cause_count_once_for_the_same_recipient(tmp_path: Path) -> None:
    zone = day_zone_with_midnight_hours_ago()
    strict = isolated_settings(max_event_age_seconds=3600, day_time_zone=zone)
    email = {"message_id": "m1", "recipient": "reader@example.com"}
    await ensure_topics(strict)
    await produce(
        strict,
        strict.topics.raw_topic,
        [
            event("email_open", "open-recent", 10, email=email),
            event("email_open", "open-old", 70, email=email),  # older than the 1 h limit: a bad row
            event("page_view", "view-old", 80, anonymous_id="v1", page={"path": "/"}),  # likewise
            event("page_view", "view-recent", 5, anonymous_id="v1", page={"path": "/"}),
        ],
    )
    worker = WorkerProcess(strict, tmp_path, "strict")
    worker.start()
    try:
        totals = await wait_for_accounting(strict, 4, timeout=60)
        assert totals["outcomes"] == {"valid": 2, "bad": 2}
    finally:
        worker.stop()

    fixed = strict.replace(max_event_age_seconds=7 * 86400)  # the cause, fixed
    worker = WorkerProcess(fixed, tmp_path, "fixed")
    worker.start()
    try:
        assert sum((await replay_bad_rows(fixed, BadReason.NOT_JSON, dry_run=True)).replayed.values()) == 0
        report = await replay_bad_rows(fixed, BadReason.TIMESTAMP_OUT_OF_RANGE)
        assert report.replayed == {fixed.topics.raw_topic: 2} and not report.skipped
        totals = await wait_for_accounting(fixed, 6, timeout=60)
        assert totals["outcomes"] == {"valid": 4, "bad": 2}
        again = await replay_bad_rows(fixed, BadReason.TIMESTAMP_OUT_OF_RANGE)
        assert sum(again.replayed.values()) == 0, "each bad row goes back once"

        today = int(
            datetime.now(ZoneInfo(zone)).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        )
        for _ in range(30):  # the KPI updates of the last flush may follow its accounting
            views = await day_values(fixed, "page_views", "*")
            if views.get(today) == (2, None):
                break
            await asyncio.sleep(1)
        assert views[today] == (2, None), views
        # The replayed open is the same recipient's (its pseudonym is kept): one unique open.
        opens = await day_values(fixed, "email_open_rate", "email")
        assert opens[today][0] == 1, opens
    finally:
        worker.stop()
