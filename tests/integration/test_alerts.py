"""Drop alerts on the real broker, with the shipped rules (deploy/alerts/rules.yml) and the
generator's stories: hours of event time in the past, read as fast as the worker can.

- "drop": the first campaign's email opens fall 60% for two hours, then recover. Exactly one
  ``firing`` of email-open-rate-drop for that campaign within two windows of the fall, one
  ``resolved`` within two windows of the recovery, and nothing else.
- "steady-week": no alert at all. CI runs its first 30 hours; ``CHAOS_TESTS=1`` runs the week.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from streams.generator import STORIES, ExpectedAlert, Story
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.support import WorkerProcess, isolated_settings, produce, read_everything, read_topic_until

pytestmark = pytest.mark.kafka

SEED = 5
HOUR = 3600


def final_result_of(settings: Settings, kpi: str, start: datetime, campaign: str) -> Any:
    """A check that the window results topic holds the final value of one hourly window."""
    wanted = json.dumps([kpi, HOUR, int(start.timestamp()), "*", campaign], separators=(",", ":"))

    def done(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        return any(r.key is not None and r.key.decode() == wanted for r in records)

    return done


async def run_story(story: Story, log_dir: Path) -> tuple[list[dict[str, Any]], datetime]:
    """Play ``story`` through a worker; return the alert events it published and the story's start."""
    # No minute windows: the shipped rules watch hours and days, and hours of event time read at
    # once would close thousands of minute cells, which only slows the run down.
    settings = isolated_settings(window_sizes="3600,86400", idle_timeout_seconds=5)
    start = story.start(datetime.now(UTC))
    messages = list(story.messages(SEED, start, settings.grace_seconds))
    await ensure_topics(settings)
    await produce(settings, settings.raw_topic, [m.payload for m in messages], [m.key for m in messages])
    worker = WorkerProcess(settings, log_dir)
    worker.start()
    try:
        # The window before the story's last hour closes once every raw partition has read
        # into that last hour; alerts are judged on the same watermark.
        last_closed = start + timedelta(hours=story.hours - 2)
        done = final_result_of(settings, "emails_delivered", last_closed, "spring_sale")
        records = await read_topic_until(settings, settings.window_results_topic, done, timeout=300)
        assert done(records), f"the story's windows did not close:\n{worker.log_tail()}"
        alerts = await read_everything(settings, [settings.alerts_topic], isolation="read_committed")
    finally:
        worker.stop()
    return [json.loads(record.value) for record in alerts if record.value], start


def matches(event: dict[str, Any], expected: ExpectedAlert) -> bool:
    window_start = datetime.fromisoformat(event["window_start"])
    return (
        event["rule"] == expected.rule
        and event["campaign"] == expected.campaign
        and event["status"] == expected.status
        and expected.earliest <= window_start <= expected.latest
    )


async def test_a_drop_fires_once_within_two_windows_and_resolves_once(tmp_path: Path) -> None:
    story = STORIES["drop"]
    events, start = await run_story(story, tmp_path)
    expected = story.expected_alerts(start)
    by_incident = {(e["incident_id"], e["status"]): e for e in events}  # repeats are allowed
    unique = list(by_incident.values())
    summary = [(e["status"], e["rule"], e["campaign"], e["window_start"], e["detail"]) for e in unique]
    assert len(unique) == len(expected), summary
    for wanted in expected:
        assert [e for e in unique if matches(e, wanted)], (wanted, summary)
    firing = next(e for e in unique if e["status"] == "firing")
    resolved = next(e for e in unique if e["status"] == "resolved")
    assert firing["incident_id"] == resolved["incident_id"]
    assert firing["cause"] == "kpi_fell", firing["detail"]
    assert firing["value"] < firing["baseline"] * 0.6


async def test_a_steady_story_yields_no_alert(tmp_path: Path) -> None:
    story = STORIES["steady-week"]
    if not os.environ.get("CHAOS_TESTS"):
        story = dataclasses.replace(story, hours=30)
    events, _ = await run_story(story, tmp_path)
    assert events == [], [(e["status"], e["rule"], e["campaign"], e["detail"]) for e in events]
