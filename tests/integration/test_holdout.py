"""A data set written by hand outside the generator, with answers worked out by hand.

tests/data/holdout/events.jsonl is a morning of a fictional coffee roaster's marketing
(organic search, a newsletter, a paid search campaign, a social post, follows and video
subscriptions, one retry and one broken line); expected.json holds the KPIs a person
computed from it with the definitions of docs/kpis.md.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agents.kafka.topics import ensure_topics
from tests.support import (
    WorkerProcess,
    isolated_settings,
    produce,
    read_everything,
    wait_for_accounting,
)

pytestmark = pytest.mark.kafka

HOLDOUT = Path(__file__).resolve().parents[1] / "data" / "holdout"


async def test_the_hand_worked_answers_match(tmp_path: Path) -> None:
    lines = (HOLDOUT / "events.jsonl").read_bytes().splitlines()
    answers: dict[str, Any] = json.loads((HOLDOUT / "expected.json").read_text())
    hour = int(datetime.fromisoformat(answers["window_start"]).timestamp())
    day = hour // 86400 * 86400
    expected = {
        (kpi, size, start, *(part.strip() for part in cell.split("|"))): tuple(parts)
        for cell, kpis in answers["cells"].items()
        for kpi, parts in kpis.items()
        for size, start in ((3600, hour), (86400, day))
    }
    for cell, kpis in answers["running_totals"].items():  # window size 0: since counting began
        for kpi, parts in kpis.items():
            expected[(kpi, 0, 0, *(part.strip() for part in cell.split("|")))] = tuple(parts)
    # Two campaigns keep their own Prometheus series; the third is folded into "other".
    settings = isolated_settings(max_event_age_seconds=5 * 365 * 86400, metrics_top_campaigns=2)
    await ensure_topics(settings)
    await produce(settings, settings.topics.raw_topic, list(lines))
    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        totals = await wait_for_accounting(settings, len(lines), timeout=120)
        assert totals["outcomes"] == answers["accounting"], worker.log_tail()
        published: dict[tuple[Any, ...], tuple[int, int | None]] = {}

        async def all_published() -> bool:
            records = await read_everything(settings, [settings.topics.kpi_updates_topic])
            for record in records:
                value = json.loads(record.value)
                published[tuple(json.loads(record.key))] = (value["numerator"], value["denominator"])
            return all(published.get(key) == parts for key, parts in expected.items())

        for _ in range(60):
            if await all_published():
                break
            await asyncio.sleep(1)
        assert {key: published.get(key) for key in expected} == expected
        hand_cells = {(k[1], k[2], k[3], k[4]) for k in expected}
        unlisted = {
            key: parts
            for key, parts in published.items()
            if (key[1], key[2], key[3], key[4]) in hand_cells and key not in expected and parts[0] != 0
        }
        assert not unlisted, unlisted

        # Bounded labels lose nothing: per measure, the campaigns' counters (folded ones under
        # "other") add up to the all-campaigns counter.
        samples = worker.metrics()
        by_campaign: dict[str, dict[str, float]] = {}
        for (name, labels), value in samples.items():
            label = dict(labels)
            if name == "mkpi_measure_total" and label["channel"] == "*":
                by_campaign.setdefault(label["campaign"], {})[label["measure"]] = value
        named = set(by_campaign) - {"*", "(none)", "other"}
        assert len(named) == 2 and named < {"march_beans", "brand_q1", "roast_day"}, sorted(by_campaign)
        for measure, total in by_campaign["*"].items():
            parts = sum(
                values.get(measure, 0.0) for campaign, values in by_campaign.items() if campaign != "*"
            )
            assert parts == total, measure
        assert sum(by_campaign["other"].values()) > 0
        gauge_campaigns = {
            dict(labels)["campaign"] for (name, labels) in samples if name == "mkpi_kpi_current"
        }
        assert gauge_campaigns - {"*", "(none)"} == named
    finally:
        worker.stop()
