"""The built-in live board in a real browser (Debian's Chromium, headless) against a worker on
the real broker: the page shows every KPI per channel, updates itself as events flow, and its
numbers are the ones computed here from the generated events."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.kafka.topics import ensure_topics
from devtools.generator import STORIES, VALID, Message, Scenario
from tests.chromium import HeadlessChromium
from tests.support import WorkerProcess, isolated_settings, produce, wait_for_accounting

pytestmark = pytest.mark.kafka

HOUR = 3600


def page_views_shown_as(expected: Counter[int]) -> str:
    """JavaScript: the all-channel page views cell as [window start, value, sparkline points,
    page refreshes] once its value is the expected one for the window it shows; else null."""
    by_start = {datetime.fromtimestamp(start, UTC).isoformat(): n for start, n in expected.items()}
    return f"""(() => {{
      const cell = document.querySelector('td[data-kpi="page_views"][data-channel="*"]');
      if (!cell || !cell.dataset.value) return null;
      const expected = {json.dumps(by_start)}[cell.dataset.windowStart];
      return Number(cell.dataset.value) === expected ? [cell.dataset.windowStart,
        Number(cell.dataset.value), Number(cell.dataset.points),
        Number(document.body.dataset.refreshes)] : null;
    }})()"""


def page_views_by_hour(messages: list[Message]) -> Counter[int]:
    """Expected page views per hour window, from the generated events themselves."""
    counts: Counter[int] = Counter()
    for message in messages:
        if message.expect == VALID and message.event_type == "page_view":
            at = datetime.fromisoformat(json.loads(message.payload)["occurred_at"]).timestamp()
            counts[int(at // HOUR) * HOUR] += 1
    return counts


async def test_the_board_shows_live_values_with_sparklines_in_chromium(tmp_path: Path) -> None:
    settings = isolated_settings(window_sizes="3600,86400")
    await ensure_topics(settings)
    # Six quiet hours before now give the sparklines a course; then live traffic, twice.
    story = dataclasses.replace(STORIES["steady-week"], hours=6)
    history = list(story.messages(7, story.start(datetime.now(UTC)), settings.windows.grace_seconds))
    live = Scenario(8, campaigns=4).messages(None, lambda: datetime.now(UTC))
    first = [next(live) for _ in range(1500)]
    sent = history + first
    await produce(settings, settings.topics.raw_topic, [m.payload for m in sent], [m.key for m in sent])

    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        await wait_for_accounting(settings, len(sent), timeout=120)
        async with HeadlessChromium(tmp_path / "chromium", width=2000, height=1000) as browser:
            await browser.open(f"{settings.web.url}/board?window={HOUR}")
            _, before, _, _ = await browser.wait_for(page_views_shown_as(page_views_by_hour(sent)), 90)

            second = [next(live) for _ in range(1500)]
            sent += second
            await produce(
                settings, settings.topics.raw_topic, [m.payload for m in second], [m.key for m in second]
            )
            shown = page_views_shown_as(page_views_by_hour(sent))
            _, after, points, refreshes = await browser.wait_for(shown, 90)
            assert after != before, "the page did not change as events flowed"
            assert refreshes >= 2  # updated in place, by its own polling: never reloaded
            assert points >= 4, "the sparkline shows the hours before"
            kpis_shown = await browser.evaluate(
                "new Set([...document.querySelectorAll('td[data-value]')].map(c => c.dataset.kpi)).size"
            )
            assert kpis_shown >= 15, "most catalog KPIs have a value for some channel"
            png = await browser.screenshot()
            assert png.startswith(b"\x89PNG")
            if target := os.environ.get("BOARD_SCREENSHOT"):  # how docs/board.png is made
                await asyncio.to_thread(Path(target).write_bytes, png)
    finally:
        worker.stop()
