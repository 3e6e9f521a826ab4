"""The KPI engine's acceptance test: every KPI of every window, channel and campaign.

200,000 generated events over six simulated hours (5% retries, 5% late within grace, 2% late
past grace but within retention, 1% past retention, 1% malformed, shuffled) go through a
worker; in the sigkill runs through a worker killed with SIGKILL and restarted three times;
in the three-worker run through three workers on six partitions; in the chaos runs through
three workers while one is killed with SIGKILL, the broker restarts and Redis is stopped for
30 seconds (the chaos script: ``CHAOS_TESTS=1`` adds the long modes). The expected numerators and denominators are computed here from the messages as
produced, the generator's hand-written channel labels and the rules docs/kpis.md states (KPI
definitions, lateness against the raw partition's watermark); the code under test is not
used to compute them. Compared: the accounting topic, the latest-value topic, the window
results (final, then revisions), the late topic, Redis and /metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from agents.kafka.connections import kafka_options
from agents.kafka.topics import ensure_topics
from agents.metrics.registry import kpi_metric
from agents.settings import Settings
from devtools.generator import DUPLICATE, VALID, Fractions, Message, Scenario
from devtools.stack.kafka import KafkaBroker
from devtools.stack.process import free_port
from devtools.stack.redis import LocalRedis
from tests.support import (
    WorkerProcess,
    accounting_totals,
    isolated_settings,
    produce,
    produce_in_parts,
    read_everything,
    wait_for_accounting,
)

pytestmark = pytest.mark.kafka

SIZES = (60, 3600, 86400)
Cell = tuple[int, int, str, str]
# kpi -> (measures added, measures subtracted, denominator or None), as docs/kpis.md defines them
DEFINITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    "page_views": (("page_views",), (), None),
    "sessions": (("sessions",), (), None),
    "organic_traffic": (("organic_page_views",), (), None),
    "organic_sessions": (("organic_sessions",), (), None),
    "blog_traffic": (("blog_page_views",), (), None),
    "time_on_page_seconds": (("engaged_ms",), (), "engagements"),
    "net_subscribers": (("subscribes",), ("unsubscribes",), None),
    "net_follows": (("follows",), ("unfollows",), None),
    "post_impressions": (("post_impressions",), (), None),
    "shares": (("shares",), (), None),
    "emails_delivered": (("emails_delivered",), (), None),
    "email_open_rate": (("email_unique_opens",), (), "emails_delivered"),
    "email_machine_opens": (("email_machine_opens",), (), None),
    "email_click_rate": (("email_unique_clicks",), (), "emails_delivered"),
    "ad_click_through_rate": (("ad_clicks",), (), "ad_impressions"),
    "social_click_through_rate": (("social_clicks",), (), "post_impressions"),
    "leads": (("leads",), (), None),
    "lead_conversion_rate": (("leads",), (), "sessions"),
}


GRACE, RETENTION = 120, 1800
SIMULATED_SPAN = 6 * 3600


def day_zone_with_midnight_hours_ago(hours: int = 3) -> str:
    """A fixed-offset zone whose last midnight was ``hours`` ago, so the simulated hours cross a
    day boundary whatever the time of the test run."""
    offset = (hours - datetime.now(UTC).hour) % 24
    if offset > 14:
        offset -= 24
    return f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-3 is UTC+3


def window_start(size: int, at: float, zone: ZoneInfo) -> int:
    if size < 86400:
        return int(at) // size * size
    local = datetime.fromtimestamp(at, zone)
    return int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())


def cells_of(at: float, channel: str, campaign: str, sizes: Iterable[int], zone: ZoneInfo) -> list[Cell]:
    return [
        (size, window_start(size, at, zone), dims[0], dims[1])
        for size in sizes
        for dims in ((channel, "*"), ("*", campaign), (channel, campaign), ("*", "*"))
    ]


def raw_partition(key: bytes | None, partitions: int) -> int:
    """Where Kafka's default partitioner (murmur2 of the key) puts a keyed message."""
    everything = list(range(partitions))
    return int(DefaultPartitioner()(key, everything, everything))


@dataclass
class Expected:
    """What the pipeline must publish, computed here from the messages as produced."""

    parts: dict[tuple[str, int, int, str, str], tuple[int, int | None]]
    outcomes: Counter[str]
    late_by_window: Counter[str]
    #: Windows every raw partition's watermark has passed by grace once all is read.
    closed_windows: set[tuple[int, int]]
    minute_measures: Counter[tuple[str, str, str]]
    #: Distinct visitors per cell (published as a HyperLogLog estimate).
    unique_visitors: dict[tuple[str, int, int, str, str], int]


def expected_results(
    messages: list[Message], partition_of: Callable[[Message], int], zone: ZoneInfo
) -> Expected:
    """The rules of docs/kpis.md applied by hand: an event counts in every window size except those
    whose end + grace + retention is at or below the highest event time read before it on its
    raw partition (valid events and retries alike); a site event counts in its session's
    channel and campaign, those of the session's first event as read (the generator keys
    events by subject, so a session's events keep their order on one partition), and the
    session counts once, with that event; unique opens and clicks count once per cell."""
    counts: defaultdict[Cell, Counter[str]] = defaultdict(Counter)
    distinct: defaultdict[tuple[Cell, str], set[Any]] = defaultdict(set)
    visitors: defaultdict[Cell, set[str]] = defaultdict(set)
    watermark: dict[int, float] = {}
    session_of: dict[str, tuple[str, str]] = {}
    outcomes: Counter[str] = Counter()
    late_by_window: Counter[str] = Counter()
    for message in messages:
        if message.expect not in (VALID, DUPLICATE):
            outcomes["bad"] += 1
            continue
        event = json.loads(message.payload)
        at = datetime.fromisoformat(event["occurred_at"]).timestamp()
        partition = partition_of(message)
        seen = watermark.get(partition)
        watermark[partition] = at if seen is None else max(seen, at)
        if message.expect == DUPLICATE:
            outcomes["duplicate"] += 1
            continue
        sizes = [s for s in SIZES if seen is None or window_start(s, at, zone) + s + GRACE + RETENTION > seen]
        late_by_window.update(str(s) for s in SIZES if s not in sizes)
        outcomes["valid" if sizes else "late"] += 1
        campaign = ((event.get("utm") or {}).get("campaign") or "").strip().lower() or "(none)"
        channel = message.channel or "?"
        starts_session = False
        if on_site(event):
            assert event.get("session_id"), "generated site events all carry a session id"
            if event["session_id"] not in session_of:
                session_of[event["session_id"]] = (channel, campaign)
                starts_session = True
            channel, campaign = session_of[event["session_id"]]
        added, once = measures_of(event, channel)
        if starts_session:
            added["sessions"] += 1
            if channel == "organic_search":
                added["organic_sessions"] += 1
        if sizes and event["type"] in ("subscribe", "unsubscribe"):  # running totals: window size 0
            for dims in ((channel, "*"), ("*", campaign), (channel, campaign), ("*", "*")):
                cell = (0, 0, *dims)
                counts[cell].update(added)
        for cell in cells_of(at, channel, campaign, sizes, zone):
            counts[cell].update(added)
            if event["type"] == "page_view":
                visitors[cell].add(event.get("user_id") or event["anonymous_id"])
            for name, subject in once:
                if subject not in distinct[(cell, name)]:
                    distinct[(cell, name)].add(subject)
                    counts[cell][name] += 1
    parts = {}
    minute_measures: Counter[tuple[str, str, str]] = Counter()
    for cell, measures in counts.items():
        if cell[0] == SIZES[0] and "*" in cell[2:]:  # a campaign's channels have no series
            for name, amount in measures.items():
                minute_measures[(name, cell[2], cell[3])] += amount
        for kpi, (plus, minus, denominator) in DEFINITIONS.items():
            inputs = (*plus, *minus, *((denominator,) if denominator else ()))
            if not any(name in measures for name in inputs):
                continue
            numerator = sum(measures[m] for m in plus) - sum(measures[m] for m in minus)
            parts[(kpi, *cell)] = (numerator, measures[denominator] if denominator else None)
    low = min(watermark.values())
    closed = {(c[0], c[1]) for c in counts if c[0] and c[1] + c[0] + GRACE <= low}
    unique_visitors = {("unique_visitors", *cell): len(ids) for cell, ids in visitors.items()}
    return Expected(parts, outcomes, late_by_window, closed, minute_measures, unique_visitors)


def on_site(event: dict[str, Any]) -> bool:
    """Page views, engagement, leads and clicks on the site (not on an email, ad or post)."""
    if event["type"] == "click":
        return not any(ref in event for ref in ("email", "ad", "social"))
    return event["type"] in ("page_view", "page_engagement", "lead")


def measures_of(event: dict[str, Any], channel: str) -> tuple[Counter[str], list[tuple[str, Any]]]:
    """The additive measures an event adds, and the distinct subjects it may add once."""
    added: Counter[str] = Counter()
    once: list[tuple[str, Any]] = []
    kind = event["type"]
    if kind == "page_view":
        added["page_views"] += 1
        if channel == "organic_search":
            added["organic_page_views"] += 1
        if event["page"]["path"].startswith("/blog/"):
            added["blog_page_views"] += 1
    elif kind == "page_engagement":
        added.update({"engagements": 1, "engaged_ms": event["engaged_ms"]})
    elif kind == "email_delivered":
        added["emails_delivered"] += 1
    elif kind == "email_open":
        if event["machine_open"]:
            added["email_machine_opens"] += 1
        else:
            once.append(("email_unique_opens", (event["email"]["message_id"], event["email"]["recipient"])))
    elif kind == "click":
        if "email" in event:
            once.append(("email_unique_clicks", (event["email"]["message_id"], event["email"]["recipient"])))
        elif "ad" in event:
            added["ad_clicks"] += 1
        else:
            added["social_clicks"] += 1
    elif kind in PLAIN_COUNTS:
        added[PLAIN_COUNTS[kind]] += 1
    return added, once  # email_sent adds nothing


PLAIN_COUNTS = {
    "ad_impression": "ad_impressions",
    "post_impression": "post_impressions",
    "share": "shares",
    "follow": "follows",
    "unfollow": "unfollows",
    "subscribe": "subscribes",
    "unsubscribe": "unsubscribes",
    "lead": "leads",
}


def latest_by_key(records: list[Any]) -> dict[tuple[str, int, int, str, str], dict[str, Any]]:
    """The last message per key, in offset order (each key lives on one partition)."""
    return {tuple(json.loads(record.key)): json.loads(record.value) for record in records}


def highest_revision(records: list[Any]) -> dict[tuple[str, int, int, str, str], dict[str, Any]]:
    best: dict[tuple[str, int, int, str, str], dict[str, Any]] = {}
    for record in records:
        key, result = tuple(json.loads(record.key)), json.loads(record.value)
        if key not in best or result["revision"] >= best[key]["revision"]:
            best[key] = result
    return best


def parts_of(values: dict[Any, dict[str, Any]]) -> dict[Any, tuple[int, int | None]]:
    return {key: (value["numerator"], value["denominator"]) for key, value in values.items()}


def split_visitors(published: dict[Any, Any]) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """(exact KPIs, unique visitors): the latter are HyperLogLog estimates."""
    exact = {k: v for k, v in published.items() if k[0] != "unique_visitors"}
    return exact, {k: v for k, v in published.items() if k[0] == "unique_visitors"}


def assert_channels_add_up(published: dict[Any, tuple[int, int | None]]) -> None:
    """Each session has one channel: for sessions, page views and leads the channels of a
    window add up to its all-channel value, and a campaign's channels to the campaign's."""
    totals: Counter[tuple[str, int, int, str, str]] = Counter()
    for (kpi, size, start, channel, campaign), (numerator, _) in published.items():
        if kpi in ("sessions", "page_views", "leads") and channel != "*":
            totals[(kpi, size, start, "*", campaign)] += numerator
    assert totals, "the data has sessions, page views and leads per channel"
    wrong = {
        key: (sum_, published.get(key, (0, None))[0])
        for key, sum_ in totals.items()
        if published.get(key, (0, None))[0] != sum_
    }
    assert not wrong, list(wrong.items())[:5]


def assert_visitors_within_error(expected: dict[Any, int], published: dict[Any, Any]) -> None:
    """Within the bound docs/kpis.md states for Redis's HyperLogLog: 5 or 3% of the true count,
    whichever is larger (thousands of cells are compared, so the worst case matters)."""
    assert set(published) == set(expected)
    off = {
        k: (v, published[k][0]) for k, v in expected.items() if abs(published[k][0] - v) > max(5, 0.03 * v)
    }
    assert not off, list(off.items())[:5]


def differences(expected: dict[Any, Any], published: dict[Any, Any]) -> str:
    missing = {k: v for k, v in expected.items() if published.get(k) != v}
    extra = [k for k in published if k not in expected]
    sample = [(k, v, published.get(k)) for k, v in list(missing.items())[:5]]
    return f"{len(missing)} wrong or missing, {len(extra)} unexpected; e.g. {sample} {extra[:3]}"


def generate(seed: int, count: int) -> list[Message]:
    """``count`` messages over SIMULATED_SPAN seconds of event time ending now."""

    def scenario() -> Scenario:
        fractions = Fractions(
            duplicates=0.05, late=0.05, revising=0.02, past_retention=0.01, malformed=0.01, shuffle_window=50
        )
        return Scenario(
            seed, campaigns=8, fractions=fractions, grace_seconds=GRACE, retention_seconds=RETENTION
        )

    ticks = itertools.count()
    list(scenario().messages(count, lambda: (next(ticks), datetime.now(UTC))[1]))
    step = SIMULATED_SPAN / next(ticks)  # the clock is read once per journey
    start = datetime.now(UTC) - timedelta(seconds=SIMULATED_SPAN + 60)
    clock = itertools.count()
    return list(scenario().messages(count, lambda: start + timedelta(seconds=next(clock) * step)))


def merged_metrics(workers: list[WorkerProcess]) -> dict[tuple[str, Any], float]:
    """The workers' /metrics as one: counters added up; for each series of the last-closed
    gauges, the worker that closed the newest window (a series moves with its partition)."""
    merged: dict[tuple[str, Any], float] = {}
    for samples in (worker.metrics() for worker in workers):
        for (name, labels), value in samples.items():
            if name in MEASURE_METRICS:
                merged[(name, labels)] = merged.get((name, labels), 0.0) + value
        for (name, labels), start in samples.items():
            key = ("mkpi_kpi_last_closed_window_start_seconds", labels)
            if name == key[0] and start >= merged.get(key, start):
                merged[key] = start
                value_metric = kpi_metric("mkpi_kpi_last_closed", dict(labels)["kpi"])
                merged[("mkpi_kpi_last_closed", labels)] = samples[(value_metric, labels)]
    return merged


#: The raw counters' metrics, and how to read a measure's amount from each: the counts carry
#: the measure as a label; the sums are metrics of their own, in their own units.
MEASURE_METRICS = {
    "mkpi_measure_total": (None, 1),
    "mkpi_engaged_seconds_total": ("engaged_ms", 1000),
    "mkpi_lead_value_cents_total": ("lead_value_cents", 1),
}


def measure_counters(samples: dict[tuple[str, Any], float]) -> dict[tuple[str, str, str], int]:
    """(measure, channel, campaign) -> amount, from every raw counter metric (zeros left out)."""
    counters = {}
    for (name, labels), value in samples.items():
        if name in MEASURE_METRICS and value:
            label = dict(labels)
            measure, factor = MEASURE_METRICS[name]
            counters[(measure or label["measure"], label["channel"], label["campaign"])] = round(
                value * factor
            )
    return counters


CHAOS = os.environ.get("CHAOS_TESTS") == "1"


def event_id_key(payload: bytes) -> bytes | None:
    """The event id as the Kafka key (None for a payload that has none)."""
    try:
        event_id = json.loads(payload).get("event_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return event_id.encode() if isinstance(event_id, str) else None


async def create_topic(settings: Settings, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


@dataclass(frozen=True)
class Run:
    messages: int
    #: SIGKILL-and-restart cycles of a lone worker before the last workers start.
    kills: int = 0
    #: Workers at the end.
    workers: int = 1
    partitions: int = 3
    #: While the last workers run: SIGTERM, then SIGKILL, one of them, restart the broker, stop
    #: Redis for REDIS_OUTAGE_SECONDS; each while they count a part of the messages.
    faults: bool = False
    #: Produced to a raw topic of one partition keyed by event id, not by subject: ingest
    #: counts them through the repartition (MKPI_RAW_KEYED_BY_SUBJECT=false).
    keyed_by_event_id: bool = False
    #: The last workers' roles (MKPI_WORKER_ROLE), one worker each; ``workers`` of role
    #: ``all`` when empty.
    roles: tuple[str, ...] = ()


#: CI runs "steady", "sigkill short", "three workers" and "chaos short"; the chaos tier
#: (CHAOS_TESTS=1) the long runs. "sigkill short", "three workers" and "chaos short" read the same
#: 60,000 messages on six partitions, so one worker (at the end) and three give identical
#: results: each equals the same expectation.
RUNS = {
    "steady": Run(200_000),
    "sigkill short": Run(60_000, kills=3, partitions=6),
    "sigkill": Run(200_000, kills=3),
    "three workers": Run(60_000, workers=3, partitions=6),
    "chaos short": Run(60_000, workers=3, partitions=6, faults=True),
    "chaos": Run(200_000, workers=3, partitions=6, faults=True),
    "repartitioned": Run(60_000, kills=1, partitions=6, keyed_by_event_id=True),
    "ingest and agent apart": Run(60_000, partitions=6, roles=("ingest", "ingest", "agent")),
}
REDIS_OUTAGE_SECONDS = 30


async def inject_faults(settings: Settings, workers: list[WorkerProcess], messages: list[Message]) -> None:
    """The messages in five parts, each produced just before (or, for Redis, during) a fault
    that hits the workers while they count it: a SIGTERM of a worker (which must end gracefully
    within the shutdown bound), kill -9 of a worker, a broker restart, and Redis stopped for
    REDIS_OUTAGE_SECONDS. A stopped or killed worker is started again."""
    broker, redis = KafkaBroker.from_settings(settings), LocalRedis.from_settings(settings)
    size = math.ceil(len(messages) / 5)
    parts = [messages[i : i + size] for i in range(0, len(messages), size)]
    produced = 0

    async def send(part: list[Message]) -> None:
        nonlocal produced
        await produce(settings, settings.topics.raw_topic, [m.payload for m in part], [m.key for m in part])
        produced += len(part)

    await send(parts[0])
    await wait_for_accounting(settings, produced, timeout=300)
    await send(parts[1])
    started = time.monotonic()
    assert workers[1].stop(timeout=settings.worker.shutdown_timeout_seconds + 30) == 0, workers[1].log_tail()
    assert time.monotonic() - started < settings.worker.shutdown_timeout_seconds, "a graceful stop, in time"
    workers[1].start()
    await wait_for_accounting(settings, produced, timeout=300)
    await send(parts[2])
    workers[0].kill()
    workers[0].start()
    await wait_for_accounting(settings, produced, timeout=300)
    await send(parts[3])
    await asyncio.to_thread(broker.stop)
    await asyncio.sleep(5)
    await asyncio.to_thread(broker.start)
    await wait_for_accounting(settings, produced, timeout=300)
    await asyncio.to_thread(redis.stop)
    await send(parts[4])
    await asyncio.sleep(REDIS_OUTAGE_SECONDS)
    assert any(w.metrics("?name[]=mkpi_redis_up")[("mkpi_redis_up", ())] == 0 for w in workers), "paused"
    await asyncio.to_thread(redis.start)


@pytest.mark.parametrize(
    "run",
    [
        "steady",
        "sigkill short",
        pytest.param("sigkill", marks=pytest.mark.skipif(not CHAOS, reason="chaos tier (CHAOS_TESTS=1)")),
        "three workers",
        "chaos short",
        pytest.param("chaos", marks=pytest.mark.skipif(not CHAOS, reason="chaos tier (CHAOS_TESTS=1)")),
        "repartitioned",
        "ingest and agent apart",
    ],
)
@pytest.mark.timeout(900)  # its own waits bound it; 200,000 events take ~2.5 min alone on 2 cores
async def test_every_kpi_of_every_window_is_exact(tmp_path: Path, run: str) -> None:
    plan = RUNS[run]
    count, kills, worker_count = plan.messages, plan.kills, plan.workers
    settings = isolated_settings(
        grace_seconds=GRACE,
        window_retention_seconds=RETENTION,
        idle_timeout_seconds=20,
        day_time_zone=day_zone_with_midnight_hours_ago(),
        partitions=plan.partitions,
        raw_keyed_by_subject=not plan.keyed_by_event_id,
    )
    messages = generate(77, count)
    # Lateness is judged by the raw partition's watermark on both paths: through the
    # repartition, the raw topic has a single partition.
    expected = expected_results(
        messages,
        (lambda m: 0) if plan.keyed_by_event_id else (lambda m: raw_partition(m.key, plan.partitions)),
        ZoneInfo(settings.windows.day_time_zone),
    )
    assert {key[0] for key in expected.parts} == set(DEFINITIONS), "the data exercises every KPI"
    assert expected.outcomes["late"] and expected.late_by_window["3600"], "some events are past retention"
    if plan.keyed_by_event_id:
        await create_topic(settings, settings.topics.raw_topic, partitions=1)
    await ensure_topics(settings)
    payloads, keys = [m.payload for m in messages], [m.key for m in messages]
    if plan.keyed_by_event_id:
        keys = [event_id_key(m.payload) for m in messages]
    producing = None
    if kills or plan.roles or (worker_count > 1 and not plan.faults):
        # Over ~60 s: each kill lands while messages are still coming, and workers that start
        # one after the other share a stream, not a backlog one of them may read alone (then
        # windows close only at its flushes, and late events may never find one closed).
        producing = asyncio.create_task(produce_in_parts(settings, payloads, keys, 60, 1.0))
    elif not plan.faults:
        await produce(settings, settings.topics.raw_topic, payloads, keys)

    for cycle in range(kills):
        victim = WorkerProcess(settings, tmp_path, f"killed-{cycle}")
        victim.start()
        await wait_for_accounting(settings, count * (cycle + 1) // (kills + 1), timeout=300)
        victim.kill()
        done = sum((await accounting_totals(settings))["outcomes"].values())
        assert 0 < done < count and producing is not None and not producing.done(), "a kill mid-stream"
    roles = plan.roles or ("all",) * worker_count
    workers = [
        WorkerProcess(
            settings.replace(
                worker_name=f"{settings.worker.worker_name}-{n}", web_port=free_port(), worker_role=role
            ),
            tmp_path,
            f"last-{n}-{role}",
        )
        for n, role in enumerate(roles)
    ]
    for worker in workers:
        worker.start()
    try:
        if plan.faults:
            await inject_faults(settings, workers, messages)
        if producing is not None:
            await producing
        totals = await wait_for_accounting(settings, count, timeout=600)
        assert totals["outcomes"] == expected.outcomes, workers[0].log_tail()
        assert totals["late_by_window"] == expected.late_by_window

        # The latest value of every KPI of every cell, on the compacted topic.
        published: dict[Any, tuple[int, int | None]] = {}
        for _ in range(90):
            records = await read_everything(
                settings, [settings.topics.kpi_updates_topic, settings.topics.window_results_topic]
            )
            updates = [r for r in records if r.topic == settings.topics.kpi_updates_topic]
            published, visitors = split_visitors(parts_of(latest_by_key(updates)))
            if published == expected.parts:
                break
            await asyncio.sleep(2)
        assert published == expected.parts, differences(expected.parts, published)
        assert_channels_add_up(published)
        assert_visitors_within_error(expected.unique_visitors, visitors)

        # Window results: every window all partitions have passed is final (the marks that
        # close the last ones follow the last deltas), and the highest revision of each result
        # is the exact value.
        closed_expected = {k: v for k, v in expected.parts.items() if (k[1], k[2]) in expected.closed_windows}
        assert closed_expected, "some windows closed"
        for _ in range(30):
            results, _ = split_visitors(
                highest_revision([r for r in records if r.topic == settings.topics.window_results_topic])
            )
            final = parts_of({k: v for k, v in results.items() if k in closed_expected})
            if final == closed_expected:
                break
            await asyncio.sleep(2)
            records = await read_everything(settings, [settings.topics.window_results_topic])
        assert final == closed_expected, differences(closed_expected, final)
        assert all(r["final"] for r in results.values())
        assert parts_of(results).items() <= expected.parts.items(), "no result differs from the truth"
        assert any(r["revision"] > 0 for r in results.values()), "late events revised closed windows"

        # The late topic lists what was not counted, window size by window size.
        late = [
            json.loads(r.value) for r in await read_everything(settings, [settings.topics.late_events_topic])
        ]
        missed = Counter(str(size) for event in late for size in event["missed_window_seconds"])
        assert missed == expected.late_by_window

        # Redis holds every cell's KPIs per window.
        client = aioredis.Redis.from_url(settings.redis.redis_url)
        try:
            in_redis: dict[Any, tuple[int, int | None]] = {}
            for size, start in {(k[1], k[2]) for k in expected.parts}:
                stored = await client.hgetall(f"{settings.topics.topic_prefix}:window:{size}:{start}")
                for field, body in stored.items():
                    kpi, channel, campaign = field.decode().split("|")
                    value = json.loads(body)
                    in_redis[(kpi, size, start, channel, campaign)] = (
                        value["numerator"],
                        value["denominator"],
                    )
        finally:
            await client.aclose()
        in_redis, visitors_in_redis = split_visitors(in_redis)
        assert in_redis == expected.parts, differences(expected.parts, in_redis)
        assert_visitors_within_error(expected.unique_visitors, visitors_in_redis)

        # /metrics: the raw counters (minute windows), and the last closed window per series.
        samples = merged_metrics(workers)
        restarted = kills or plan.faults
        if not restarted:  # a restarted worker counts from zero
            known = {measure for measure, _, _ in expected.minute_measures}
            counters = {key: value for key, value in measure_counters(samples).items() if key[0] in known}
            assert counters == expected.minute_measures, differences(expected.minute_measures, counters)
        # Windows go on closing while the test reads (idle partitions' watermarks follow the
        # clock), so a gauge may show a newer window than the results read above: read the
        # results again after the gauges, and find there the window each gauge shows.
        newest_closed: dict[tuple[str, int, str, str], int] = {}
        for kpi, size, start, channel, campaign in results:
            if "*" not in (channel, campaign):
                continue  # a campaign's channels: on the topics and in the view, not in Prometheus
            series = (kpi, size, channel, campaign)
            newest_closed[series] = max(newest_closed.get(series, start), start)
        shown: dict[tuple[str, int, int, str, str], float] = {}
        for (kpi, size, channel, campaign), start in newest_closed.items():
            labels = (("campaign", campaign), ("channel", channel), ("kpi", kpi), ("window", f"{size}s"))
            starts = samples.get(("mkpi_kpi_last_closed_window_start_seconds", labels))
            if starts is None and restarted:
                continue  # closed before the last restart: that process's gauges are gone
            assert starts is not None and starts >= start, (kpi, size, channel, campaign, starts, start)
            shown[(kpi, size, int(starts), channel, campaign)] = samples[("mkpi_kpi_last_closed", labels)]
        for _ in range(15):
            later = highest_revision(await read_everything(settings, [settings.topics.window_results_topic]))
            if shown.keys() <= later.keys():
                break
            await asyncio.sleep(1)
        for key, gauge in shown.items():
            value = later[key]["value"]
            assert gauge == value or (value is None and math.isnan(gauge)), key
        if worker_count > 1:
            # Every worker, the restarted ones included, holds raw partitions again at the end
            # and has folded deltas in since its last start: work came back to it.
            assert all(w.metrics()[("mkpi_deltas_applied_total", ())] > 0 for w in workers), "all did work"
            assigned = [w.metrics()[("mkpi_ingest_assigned_partitions", ())] for w in workers]
            assert sum(assigned) == plan.partitions and min(assigned) >= 1, assigned
        if plan.roles:
            # Ingest ran in the ingest workers only, the KPI agent in the agent worker only.
            metrics = [w.metrics() for w in workers]
            owned = [m.get(("mkpi_ingest_assigned_partitions", ()), 0.0) for m in metrics]
            applied = [m.get(("mkpi_deltas_applied_total", ()), 0.0) for m in metrics]
            ingesting = [role == "ingest" for role in roles]
            assert sum(owned) == plan.partitions and all(
                (n > 0) == i for n, i in zip(owned, ingesting, strict=True)
            ), owned
            assert all((n > 0) == (not i) for n, i in zip(applied, ingesting, strict=True)), applied
    finally:
        if producing is not None:
            producing.cancel()
        for worker in workers:
            worker.stop()
