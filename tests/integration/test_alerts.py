"""Drop alerts on the real broker, with the shipped rules (streams/core/alert_rules.yml) and the
generator's stories: hours of event time in the past, read as fast as the worker can.

- "drop": the first campaign's email opens fall 60% for two hours, then recover. Exactly one
  ``firing`` of email-open-rate-drop for that campaign within two windows of the fall, one
  ``resolved`` within two windows of the recovery, and nothing else; the cause: the KPI fell.
- "broken-tracking": the same two hours, but the opens arrive broken (bad rows): the same
  incident, put down to broken tracking.
- "steady-week": no alert at all, though every rule judges its windows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from agents.kafka.topics import ensure_topics
from devtools.generator import CAMPAIGNS, STORIES, ExpectedAlert, Message, Story
from streams.contracts.outputs import KpiKey
from tests.support import (
    WorkerProcess,
    isolated_settings,
    produce,
    read_everything,
    read_topic_until,
    wait_until,
)

pytestmark = pytest.mark.kafka

SEED = 5
OPEN_RATE_RULE = "email-open-rate-drop"
OPEN_RATE_KPI = "email_open_rate"
HOUR = 3600


def judgements(worker: WorkerProcess) -> dict[tuple[str, str], float]:
    """mkpi_alert_judgements_total by (rule, result)."""
    return {
        (labels["rule"], labels["result"]): value
        for (name, label_pairs), value in worker.metrics().items()
        if name == "mkpi_alert_judgements_total" and (labels := dict(label_pairs))
    }


def judged(counts: dict[tuple[str, str], float], rule: str) -> float:
    return counts.get((rule, "ok"), 0) + counts.get((rule, "breach"), 0)


def _has_keys(keys: set[bytes], records: list[ConsumerRecord[bytes, bytes]]) -> bool:
    return keys <= {r.key for r in records}


@dataclasses.dataclass
class Played:
    alerts: list[dict[str, Any]]
    start: datetime
    #: mkpi_alert_judgements_total by (rule, result)
    judgements: dict[tuple[str, str], float]


async def run_story(story: Story, log_dir: Path, kill_after_firing: bool = False) -> Played:
    """Play ``story`` through a worker: the alert events it published, and how many windows
    each rule judged (since the worker's last start).

    ``kill_after_firing``: only the events up to half an hour after the dip go first; once the
    worker logs the firing it is SIGKILLed, the rest is sent, and it starts again."""
    # No minute windows: the shipped rules watch hours and days, and hours of event time read at
    # once would close thousands of minute cells, which only slows the run down.
    # Windows close on event time only: an idle partition's watermark would creep on after the
    # story (1 s per s) and judge the silence after it.
    settings = isolated_settings(window_sizes="3600,86400", idle_timeout_seconds=86400)
    start = story.start(datetime.now(UTC))
    messages = list(story.messages(SEED, start, settings.windows.grace_seconds))
    later: list[Message] = []
    if kill_after_firing:
        dip = story.open_dip(start)
        assert dip is not None
        cut = next(i for i, m in enumerate(messages) if event_time(m) > dip.ends + timedelta(minutes=30))
        messages, later = messages[:cut], messages[cut:]
    await ensure_topics(settings)
    await produce(
        settings, settings.topics.raw_topic, [m.payload for m in messages], [m.key for m in messages]
    )
    worker = WorkerProcess(settings, log_dir)
    worker.start()
    try:
        if kill_after_firing:
            await wait_until(lambda: "alert firing" in worker.log_tail(500), timeout=120)
            worker.kill()
            await produce(
                settings, settings.topics.raw_topic, [m.payload for m in later], [m.key for m in later]
            )
            worker.start()
        # Each campaign's series lives on its own delta partition, and each partition goes at
        # its own pace: wait until both campaigns' hours are judged up to the story's last
        # (the window before it closes once every raw partition has read into it).
        if kill_after_firing:  # the counters restarted with the worker: wait for the results
            last = start + timedelta(hours=story.hours - 2)
            keys = {
                KpiKey(OPEN_RATE_KPI, HOUR, int(last.timestamp()), "*", c).encode() for c in CAMPAIGNS[:2]
            }
            done = partial(_has_keys, keys)
            records = await read_topic_until(
                settings, settings.topics.window_results_topic, done, timeout=300
            )
            assert done(records), worker.log_tail()
            await asyncio.sleep(5)  # judged on the same mark, just after
        else:
            wanted = 2 * (story.hours - 2)
            await wait_until(lambda: judged(judgements(worker), OPEN_RATE_RULE) >= wanted, timeout=300)
        alerts = await read_everything(settings, [settings.topics.alerts_topic])
        counts = judgements(worker)
    finally:
        worker.stop()
    return Played([json.loads(record.value) for record in alerts if record.value], start, counts)


def matches(event: dict[str, Any], expected: ExpectedAlert) -> bool:
    window_start = datetime.fromisoformat(event["window_start"])
    return (
        event["rule"] == expected.rule
        and event["campaign"] == expected.campaign
        and event["status"] == expected.status
        and expected.earliest <= window_start <= expected.latest
    )


def event_time(message: Message) -> datetime:
    return datetime.fromisoformat(json.loads(message.payload)["occurred_at"])


@pytest.mark.parametrize(
    ("name", "kill_after_firing"),
    [("drop", False), ("broken-tracking", False), ("drop", True)],
    ids=["drop", "broken", "drop-sigkill"],
)
async def test_a_drop_fires_once_within_two_windows_and_resolves_once(
    name: str, kill_after_firing: bool, tmp_path: Path
) -> None:
    """The KPI fell, or its events became bad rows: one incident each, with its cause; and the
    same incident, once, when the worker is SIGKILLed between firing and resolving (a repeat
    of an event, same incident id and status, is allowed)."""
    story = STORIES[name]
    played = await run_story(story, tmp_path, kill_after_firing)
    expected = story.expected_alerts(played.start)
    by_incident = {(e["incident_id"], e["status"]): e for e in played.alerts}  # repeats are allowed
    unique = list(by_incident.values())
    summary = [(e["status"], e["rule"], e["campaign"], e["window_start"], e["detail"]) for e in unique]
    assert len(unique) == len(expected), summary
    for wanted in expected:
        assert [e for e in unique if matches(e, wanted)], (wanted, summary)
    firing = next(e for e in unique if e["status"] == "firing")
    resolved = next(e for e in unique if e["status"] == "resolved")
    assert firing["incident_id"] == resolved["incident_id"]
    assert firing["cause"] == expected[0].cause, firing["detail"]
    assert firing["value"] < firing["baseline"] * 0.6


async def test_a_steady_week_yields_no_alert(tmp_path: Path) -> None:
    played = await run_story(STORIES["steady-week"], tmp_path)
    events = played.alerts
    assert events == [], [(e["status"], e["rule"], e["campaign"], e["detail"]) for e in events]
    # Quiet because every window was judged and passed, not because none was judged: each
    # campaign's hours after the first, and the days after the first of each channel with volume.
    assert played.judgements[(OPEN_RATE_RULE, "ok")] >= 2 * (STORIES["steady-week"].hours - 2)
    assert played.judgements.get(("lead-conversion-drop", "ok"), 0) >= 5, played.judgements
    assert not any(result == "breach" and n for (_, result), n in played.judgements.items()), (
        played.judgements
    )
