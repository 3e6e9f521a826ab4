"""Page views with known answers through a real broker and a real worker process.

The expected KPIs are computed here from the test's own labels (each event is built
with the channel it must be attributed to) and the definitions in docs/kpis.md, not by the
code under test.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from agents.kafka.connections import kafka_options
from agents.settings import Settings
from tests.support import WorkerProcess, isolated_settings, leads_delta, produce, read_topic_until, run_cli

pytestmark = pytest.mark.kafka

WINDOW = 60
SIZES = (60, 3600, 86400)
MEASURE_OF = {
    "page_views": "page_views",
    "organic_traffic": "organic_page_views",
    "blog_traffic": "blog_page_views",
}
# (utm, referrer, the channel the event must land in, the campaign it must count under)
TEMPLATES: list[tuple[dict[str, str] | None, str | None, str, str]] = [
    (
        {"source": "google", "medium": "organic", "campaign": "spring_sale"},
        "https://www.google.com/",
        "organic_search",
        "spring_sale",
    ),
    ({"source": "bing", "medium": "organic"}, None, "organic_search", "(none)"),
    (None, "https://www.google.de/search?q=kpi", "organic_search", "(none)"),
    (
        {"source": "DuckDuckGo", "medium": "Organic", "campaign": " Black_Friday "},
        None,
        "organic_search",
        "black_friday",
    ),
    (
        {"source": "google", "medium": "cpc", "campaign": "spring_sale"},
        "https://www.google.com/",
        "paid_search",
        "spring_sale",
    ),
    ({"source": "newsletter", "medium": "email", "campaign": "black_friday"}, None, "email", "black_friday"),
    (None, None, "direct", "(none)"),
    (None, "https://partner.example.org/review", "referral", "(none)"),
    (
        {"source": "facebook", "medium": "social", "campaign": "launch"},
        "https://m.facebook.com/",
        "organic_social",
        "launch",
    ),
]
OFFSETS = [UTC, timezone(timedelta(hours=3, minutes=30)), timezone(timedelta(hours=-5))]
MALFORMED = {
    "not_json": [b"{not json", b"", b"\xff\xfe\x00", b'{"type": "page_view"'],
    "schema_violation": [
        b"null",
        b'{"type":"page_view","schema_version":"1-0-0","event_id":"x1","occurred_at":"2026-01-01T00:00:00Z"}',
        b'{"type":"page_view","schema_version":"1-0-0","event_id":"x2","occurred_at":"yesterday","page":{"path":"/"}}',
        b'{"type":"page_view","schema_version":"1-0-0","event_id":"","occurred_at":"2026-01-01T00:00:00Z","page":{"path":"/"}}',
    ],
    "unknown_type": [b'{"type":"page_vue","event_id":"x3"}', b'{"type":"purchase","event_id":"x4"}'],
}
Key = tuple[str, int, int, str, str]


def build_events(count: int, seed: int) -> tuple[list[bytes], dict[Key, int]]:
    """Events spread over three past windows, and the KPI values they must produce."""
    rng = random.Random(seed)
    first_window = int(datetime.now(UTC).timestamp()) // WINDOW * WINDOW - 10 * WINDOW
    expected: Counter[Key] = Counter()
    payloads = []
    for index in range(count):
        utm, referrer, channel, campaign = rng.choice(TEMPLATES)
        window = first_window + WINDOW * rng.randrange(3)
        instant = datetime.fromtimestamp(window + rng.uniform(0, WINDOW - 0.001), UTC)
        blog = rng.random() < 0.4
        path = f"/blog/post-{rng.randrange(5)}" if blog else rng.choice(["/", "/pricing", "/blogger"])
        event: dict[str, object] = {
            "type": "page_view",
            "schema_version": "1-0-0",
            "event_id": f"e2e-{seed}-{index}",
            "occurred_at": instant.astimezone(rng.choice(OFFSETS)).isoformat(),
            "anonymous_id": f"visitor-{rng.randrange(50)}",
            "session_id": f"e2e-{seed}-{index}",  # a session each: every view keeps its channel
            "page": {"path": path, **({"referrer": referrer} if referrer else {})},
        }
        if utm:
            event["utm"] = utm
        payloads.append(json.dumps(event).encode())
        kpis = ["page_views"]
        if channel == "organic_search":
            kpis.append("organic_traffic")
        if blog:
            kpis.append("blog_traffic")
        for kpi in kpis:
            for size in SIZES:  # default windows; day windows in UTC
                start = int(instant.timestamp()) // size * size
                for dims in ((channel, "*"), ("*", campaign), (channel, campaign), ("*", "*")):
                    expected[(kpi, size, start, *dims)] += 1
    return payloads, dict(expected)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    settings = isolated_settings()
    process = WorkerProcess(settings, Path(tmp_path_factory.mktemp("worker")))
    process.start()
    yield process
    process.stop()


def latest_values(records: list) -> dict[Key, int]:
    latest: dict[Key, int] = {}
    for record in records:
        key = tuple(json.loads(record.key))
        latest[key] = json.loads(record.value)["value"]  # type: ignore[index]
    return latest


async def test_page_views_become_exact_kpis_on_topic_and_metrics(worker: WorkerProcess) -> None:
    settings = worker.settings
    payloads, expected = build_events(1500, seed=7)
    malformed = [payload for group in MALFORMED.values() for payload in group]
    mixed = payloads[:700] + malformed + payloads[700:]
    await produce(settings, settings.topics.raw_topic, mixed)

    wanted_kpis = {"page_views", "organic_traffic", "blog_traffic"}

    def caught_up(records: list) -> bool:
        latest = latest_values(records)
        return all(latest.get(key) == value for key, value in expected.items())

    records = await read_topic_until(settings, settings.topics.kpi_updates_topic, caught_up, timeout=90)
    latest = {k: v for k, v in latest_values(records).items() if k[0] in wanted_kpis}
    assert latest == expected, worker.log_tail()

    # The same numbers on /metrics: totals over all windows, and the newest window's value.
    samples = worker.metrics()
    totals: Counter[tuple[str, str, str]] = Counter()
    newest: dict[tuple[str, str, str], tuple[int, int]] = {}
    for (kpi, size, window, channel, campaign), value in expected.items():
        if size != WINDOW or "*" not in (channel, campaign):  # a campaign's channels: no series
            continue
        totals[(kpi, channel, campaign)] += value
        if window >= newest.get((kpi, channel, campaign), (0, 0))[0]:
            newest[(kpi, channel, campaign)] = (window, value)
    for (kpi, channel, campaign), total in totals.items():
        measure_labels = (("campaign", campaign), ("channel", channel), ("measure", MEASURE_OF[kpi]))
        assert samples[("mkpi_measure_total", measure_labels)] == total, (kpi, channel, campaign)
        labels = (("campaign", campaign), ("channel", channel), ("kpi", kpi), ("window", "60s"))
        assert samples[("mkpi_kpi_current", labels)] == newest[(kpi, channel, campaign)][1]
    assert any(
        value > 0
        for (name, labels), value in samples.items()
        if name == "mkpi_kpi_current"
        and ("kpi", "organic_traffic") in labels
        and dict(labels)["campaign"] not in ("*", "(none)")
    )
    assert samples[("mkpi_ingest_messages_total", (("outcome", "valid"),))] == len(payloads)
    assert samples[("mkpi_ingest_messages_total", (("outcome", "bad"),))] == len(malformed)
    for reason, group in MALFORMED.items():
        assert samples[("mkpi_ingest_bad_rows_total", (("reason", reason),))] == len(group)
    only = worker.metrics("?name[]=mkpi_ingest_messages_total&name[]=mkpi_ingest_bad_rows_total")
    assert only == {
        key: value
        for key, value in samples.items()
        if key[0] in {"mkpi_ingest_messages_total", "mkpi_ingest_bad_rows_total"}
    }

    # The Redis view serves the newest window of every series, over HTTP and on the command line.
    newest_per_series: dict[tuple[str, str, str], tuple[int, int]] = {}
    for (kpi, size, window, channel, campaign), value in expected.items():
        if size == WINDOW and window >= newest_per_series.get((kpi, channel, campaign), (0, 0))[0]:
            newest_per_series[(kpi, channel, campaign)] = (window, value)
    served = worker.get_json("/api/kpis?window=60&kpi=organic_traffic")
    want = {(c, camp): v for (k, c, camp), (_, v) in newest_per_series.items() if k == "organic_traffic"}
    assert {(u["channel"], u["campaign"]): u["value"] for u in served} == want
    printed = run_cli(settings, "query", "--window", "60", "--kpi", "organic_traffic", "--json")
    assert {(u["channel"], u["campaign"]): u["value"] for u in json.loads(printed)} == want
    table = run_cli(
        settings, "query", "--window", "60", "--kpi", "organic_traffic", "--campaign", "spring_sale"
    )
    assert "spring_sale" in table and "black_friday" not in table

    # Every malformed message is on the bad-row topic, once, with its reason and coordinates.
    bad = await read_topic_until(
        settings, settings.topics.bad_rows_topic, lambda r: len(r) >= len(malformed), timeout=30
    )
    rows = [json.loads(record.value) for record in bad]
    assert Counter(row["reason"] for row in rows) == {k: len(v) for k, v in MALFORMED.items()}
    assert all(row["source_topic"] == settings.topics.raw_topic for row in rows)
    assert len({(row["source_partition"], row["source_offset"]) for row in rows}) == len(malformed)


async def test_deltas_of_an_aborted_transaction_are_not_counted(worker: WorkerProcess) -> None:
    """The agent reads the delta topic read_committed: an aborted ingest batch counts zero times."""
    settings: Settings = worker.settings
    minute = int(time.time()) // 60 * 60  # a window that cannot have expired
    key = json.dumps(["leads", 60, minute, "*", "probe"], separators=(",", ":")).encode()

    producer = AIOKafkaProducer(**kafka_options(settings), transactional_id=f"{settings.topics.app_id}-probe")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(
            settings.topics.deltas_topic, leads_delta(minute, "probe", 1000), partition=0
        )
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(settings.topics.deltas_topic, leads_delta(minute, "probe", 5), partition=0)
    finally:
        await producer.stop()

    records = await read_topic_until(
        settings, settings.topics.kpi_updates_topic, lambda r: any(rec.key == key for rec in r), timeout=60
    )
    values = [json.loads(rec.value)["value"] for rec in records if rec.key == key]
    assert values == [5]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            "deploy/prometheus/rules/*.yml",
            {"mkpi_measure_total", "mkpi_engaged_seconds_total", "mkpi_ingest_lag_messages", "mkpi_redis_up"},
        ),
        (
            "deploy/grafana/dashboards/**/*.json",
            {
                "mkpi_kpi_current",
                "mkpi_kpi_current_ratio",
                "mkpi_kpi_current_seconds",
                "mkpi_kpi_last_closed",
                "mkpi_kpi_last_closed_ratio",
                "mkpi_alerts_total",
                "mkpi_low_watermark_seconds",
            },
        ),
    ],
    ids=["prometheus rules", "grafana dashboards"],
)
def test_every_metric_rules_and_dashboards_use_is_exported(
    worker: WorkerProcess, files: str, expected: set[str]
) -> None:
    """Runs after the events above: a rule or a panel on a metric the worker does not export
    would never fire or show anything."""
    root = Path(__file__).resolve().parents[2]
    used = {
        name
        for path in root.glob(files)
        for name in re.findall(r"(?<![\w:])mkpi_[a-z_]+(?![\w:])", path.read_text())
    }
    assert expected <= used
    # Samples, and declared families: a unit's metric may have no sample yet (no engagement
    # events here).
    declared = set(re.findall(r"^# TYPE (\S+) ", worker.metrics_text(), re.MULTILINE))
    exported = declared | {name for name, _ in worker.metrics()}
    assert used - exported == set(), "not exported by the worker"
