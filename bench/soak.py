"""Soak run: one worker fed realistic events at a steady rate for a long time.

    MKPI_WINDOW_RETENTION_SECONDS=300 python -m bench.soak --minutes 30 --rate 3500 \
        --warmup-minutes 8 --record

Every ``--sample-seconds`` it records the worker's resident memory, ingest's lag (raw messages
not yet read) and the KPI agent's backlog (deltas produced but not yet folded into the table).
At the end it waits for the worker to account for every message and compares the totals with
the generator's ground truth. It reports memory after the warm-up (lowest, highest, and its
trend as a least-squares slope in MB per 10 minutes), the largest lag and backlog, and whether
the totals are exact, and how many delta messages the KPI agent's committed offsets trail by
at the end; ``--record`` appends the report to docs/soak/README.md. The rate should be half of
C's on the machine (docs/benchmarks/README.md, "How to run").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from agents.kafka.connections import kafka_options
from agents.kafka.topics import ensure_topics
from agents.settings import Settings
from bench.peers import baseline_tree, unknown_to
from bench.workers import REPO, bench_settings, machine, remove_data
from devtools.generator import Fractions, GroundTruth, Scenario
from devtools.stack.process import wait_for_http
from devtools.stack.settings import StackSettings
from devtools.stack.workers import start_worker

SAMPLED_METRICS = (
    "mkpi_ingest_lag_messages",
    "mkpi_ingest_messages_total",
    "mkpi_ingest_deltas_total",
    "mkpi_deltas_applied_total",
    "mkpi_deltas_replayed_total",
)


@dataclass
class Sample:
    seconds: float
    rss_mb: float
    ingest_lag: int
    agent_backlog: int
    ingested: int


@dataclass
class SoakReport:
    minutes: float
    rate: float
    produced: int
    #: Window sizes, grace and retention: cells live until window end + grace + retention, so
    #: memory can only level off once the first windows expire.
    windows: str = ""
    samples: list[Sample] = field(default_factory=list)
    exact: bool = False
    outcomes: dict[str, int] = field(default_factory=dict)
    expected_outcomes: dict[str, int] = field(default_factory=dict)
    #: At the end, the most delta messages of a partition past the agent's committed offset
    #: (a transaction marker after the last record leaves 1): what a restart would read again.
    uncommitted_deltas: int = -1
    #: Samples the worker did not answer in time (its event loop held up).
    unanswered: int = 0

    def after_warmup(self, warmup_seconds: float) -> list[Sample]:
        return [s for s in self.samples if s.seconds >= warmup_seconds] or self.samples

    def summary(self, warmup_seconds: float) -> dict[str, Any]:
        steady = self.after_warmup(warmup_seconds)
        return {
            "minutes": self.minutes,
            "windows": self.windows,
            "rate": round(self.rate),
            "produced": self.produced,
            "exact": self.exact,
            "rss_mb_after_warmup": {
                "min": round(min(s.rss_mb for s in steady), 1),
                "max": round(max(s.rss_mb for s in steady), 1),
                "slope_mb_per_10_min": round(slope([(s.seconds, s.rss_mb) for s in steady]) * 600, 2),
            },
            "rss_growth_last_30min_pct": self.growth_pct(1800),
            "rss_mb_per_million_events": round(slope([(s.ingested, s.rss_mb) for s in steady]) * 1e6, 2),
            "uncommitted_deltas_at_end": self.uncommitted_deltas,
            "unanswered_samples": self.unanswered,
            "max_ingest_lag": max(s.ingest_lag for s in self.samples),
            "max_agent_backlog": max(s.agent_backlog for s in self.samples),
            "ingest_lag_after_warmup": {
                "max": max(s.ingest_lag for s in steady),
                "slope_per_10_min": round(slope([(s.seconds, s.ingest_lag) for s in steady]) * 600, 1),
            },
        }

    def growth_pct(self, seconds: float) -> float:
        """How much RSS grew over the last ``seconds`` of the run (the whole run when shorter),
        in percent: the fitted line's rise over the span, against its value at the start."""
        end = self.samples[-1].seconds
        tail = [(s.seconds, s.rss_mb) for s in self.samples if s.seconds >= end - seconds]
        if len(tail) < 2:
            return 0.0
        rate = slope(tail)
        start_x = tail[0][0]
        mean_x = sum(x for x, _ in tail) / len(tail)
        at_start = sum(y for _, y in tail) / len(tail) - rate * (mean_x - start_x)
        return round(rate * (end - start_x) / at_start * 100, 2) if at_start else 0.0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two points)."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def worker_sample(settings: Settings, pid: int, started: float) -> Sample:
    query = urllib.parse.urlencode([("name[]", name) for name in SAMPLED_METRICS])
    with urllib.request.urlopen(f"{settings.web.url}/metrics?{query}", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = dict.fromkeys(SAMPLED_METRICS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS")
    )
    folded = totals["mkpi_deltas_applied_total"] + totals["mkpi_deltas_replayed_total"]
    return Sample(
        seconds=round(time.monotonic() - started, 1),
        rss_mb=round(rss_kb / 1024, 1),
        ingest_lag=int(totals["mkpi_ingest_lag_messages"]),
        agent_backlog=int(max(0.0, totals["mkpi_ingest_deltas_total"] - folded)),
        ingested=int(totals["mkpi_ingest_messages_total"]),
    )


async def accounted(settings: Settings) -> Counter[str]:
    """Outcomes summed over the (read committed) ingest reports."""
    consumer = AIOKafkaConsumer(
        settings.topics.accounting_topic,
        **kafka_options(settings),
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    outcomes: Counter[str] = Counter()
    try:
        while batches := await consumer.getmany(timeout_ms=1000):
            for records in batches.values():
                for record in records:
                    outcomes.update(json.loads(record.value or b"{}")["outcomes"])
    finally:
        await consumer.stop()
    return outcomes


async def uncommitted_deltas(settings: Settings, settle_seconds: float = 30.0) -> int:
    """The most delta messages of one partition past the agent's committed offset, once the
    agent has committed for ``settle_seconds`` after the input stopped (or sooner, at 1)."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        deadline = time.monotonic() + settle_seconds
        while True:
            committed = await admin.list_consumer_group_offsets(settings.topics.app_id)
            delta_partitions = [tp for tp in committed if tp.topic == settings.topics.deltas_topic]
            ends = await consumer.end_offsets(delta_partitions)
            behind = max((ends[tp] - committed[tp].offset for tp in delta_partitions), default=-1)
            if 0 <= behind <= 1 or time.monotonic() > deadline:
                return behind
            await asyncio.sleep(2)
    finally:
        await consumer.stop()
        await admin.close()


async def feed(settings: Settings, rate: float, seconds: float, seed: int, truth: GroundTruth) -> int:
    """Realistic events (retries and malformed messages included) at ``rate`` per second."""
    scenario = Scenario(seed, campaigns=50, fractions=Fractions(duplicates=0.02, malformed=0.002), live=True)
    events = scenario.messages(None, lambda: datetime.now(UTC))
    producer = AIOKafkaProducer(**kafka_options(settings), linger_ms=5, acks="all", enable_idempotence=True)
    await producer.start()
    produced = 0
    try:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            while produced < elapsed * rate:
                message = next(events)
                await producer.send(settings.topics.raw_topic, message.payload, key=message.key)
                truth.add(message)
                produced += 1
            await asyncio.sleep(0.005)
        await producer.flush()
    finally:
        await producer.stop()
    return produced


async def soak(
    settings: Settings, worker: subprocess.Popen[bytes], minutes: float, rate: float, every: float, seed: int
) -> SoakReport:
    windows = (
        f"windows {settings.windows.window_sizes} s, grace {settings.windows.grace_seconds} s, "
        f"retention {settings.windows.window_retention_seconds} s"
    )
    report = SoakReport(minutes=minutes, rate=rate, produced=0, windows=windows)
    truth = GroundTruth()
    started = time.monotonic()
    feeding = asyncio.create_task(feed(settings, rate, minutes * 60, seed, truth))
    while not feeding.done():
        await asyncio.wait([feeding], timeout=every)
        try:
            report.samples.append(await asyncio.to_thread(worker_sample, settings, worker.pid, started))
        except OSError as exc:  # a worker too busy to answer its /metrics within 5 s
            report.unanswered += 1
            print(f"{time.monotonic() - started:7.0f} s  the worker's /metrics did not answer: {exc}")
            continue
        last = report.samples[-1]
        print(
            f"{last.seconds:7.0f} s  rss {last.rss_mb:6.1f} MB  ingest lag {last.ingest_lag:7,}  "
            f"agent backlog {last.agent_backlog:5,}  ingested {last.ingested:,}",
            flush=True,
        )
    report.produced = await feeding
    deadline = time.monotonic() + 300
    outcomes = await accounted(settings)
    while sum(outcomes.values()) < truth.raw and time.monotonic() < deadline:
        await asyncio.sleep(2)
        outcomes = await accounted(settings)
    report.outcomes, report.expected_outcomes = dict(outcomes), dict(truth.outcomes)
    report.exact = outcomes == truth.outcomes
    report.uncommitted_deltas = await uncommitted_deltas(settings)
    return report


def run_soak(
    base: Settings, minutes: float, rate: float, every: float, seed: int, tree: Path = REPO
) -> SoakReport:
    """A worker of its own (from ``tree``: another commit's checkout) on fresh topics, fed for
    ``minutes``; its data is removed after."""
    settings = bench_settings(base)
    log_path = Path(tempfile.gettempdir()) / f"{settings.topics.topic_prefix}-soak-worker.log"
    try:
        asyncio.run(ensure_topics(settings))
        worker = start_worker(settings, log_path, tree, unknown_to(tree, settings))
        try:
            if not wait_for_http(f"{settings.web.url}/healthz", worker, timeout=120):
                raise SystemExit(f"the worker did not become healthy; see {log_path}")
            return asyncio.run(soak(settings, worker, minutes, rate, every, seed))
        finally:
            worker.terminate()
            worker.wait(60)
    finally:
        remove_data(settings)


def markdown(summary: dict[str, Any], report: SoakReport, warmup_seconds: float) -> str:
    memory, lag = summary["rss_mb_after_warmup"], summary["ingest_lag_after_warmup"]
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {summary['minutes']} minutes at "
        f"{summary['rate']:,} events/s",
        "",
        f"Machine: {machine()}. Commit {commit()}, worker of {summary['worker']}. Warm-up: the first "
        f"{warmup_seconds / 60:g} minutes.",
        f"Settings: {summary['windows']} (a cell lives until its window's end + grace + retention,",
        "so memory levels off only once the first windows have expired).",
        "",
        f"- Messages: {summary['produced']:,}; totals exact against the generator's truth: "
        f"**{'yes' if summary['exact'] else 'NO'}**.",
        f"- Memory after warm-up: {memory['min']}-{memory['max']} MB RSS, trend "
        f"{memory['slope_mb_per_10_min']:+} MB per 10 minutes ({summary['rss_mb_per_million_events']:+} MB "
        f"per million events); growth over the last 30 minutes {summary['rss_growth_last_30min_pct']:+}%.",
        f"- Ingest lag: at most {summary['max_ingest_lag']:,} messages (after warm-up at most "
        f"{lag['max']:,}, trend {lag['slope_per_10_min']:+} per 10 minutes); KPI agent backlog at "
        f"most {summary['max_agent_backlog']:,} cell deltas (produced by ingest, not yet folded in).",
        f"- Delta messages past the KPI agent's committed offset at the end: at most "
        f"{summary['uncommitted_deltas_at_end']:,} per partition (1 is a transaction marker).",
        "",
        "| minute | RSS MB | ingest lag | agent backlog |",
        "|---|---|---|---|",
    ]
    last_minute = -1
    for sample in report.samples:
        minute = int(sample.seconds // 60)
        if minute != last_minute:
            lines.append(f"| {minute} | {sample.rss_mb} | {sample.ingest_lag:,} | {sample.agent_backlog:,} |")
            last_minute = minute
    return "\n".join([*lines, "", ""])


def record_figures(key: str, figures: dict[str, Any], headline: bool) -> None:
    """Put ``figures`` under ``key`` in docs/benchmarks/latest.json (the benchmark's record);
    ``headline``: this checkout's, whose headline figures go at its top level too."""
    target = REPO / "docs" / "benchmarks" / "latest.json"
    recorded = json.loads(target.read_text(encoding="utf-8")) if target.exists() else {}
    recorded[key] = figures
    for name in HEADLINE if headline else ():
        if name in figures:
            recorded[name] = figures[name]
    target.write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")


#: The figures issue 27 asked for at the top of docs/benchmarks/latest.json.
HEADLINE = (
    "rss_mb_soak_max",
    "rss_growth_last_30min_pct",
    "restart_ready_seconds",
    "restart_after_kill_ready_seconds",
    "restore_entries_per_second",
)


def commit() -> str:
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty=-with-uncommitted-changes"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return described.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=3500.0,
        help="events per second (default: half of C's on the last recorded machine; measure yours)",
    )
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--baseline", help="run the worker of this commit instead (its own checkout)")
    parser.add_argument(
        "--record",
        action="store_true",
        help="append the report to docs/soak/README.md and put its figures in docs/benchmarks/latest.json",
    )
    args = parser.parse_args()
    tree = REPO if args.baseline is None else baseline_tree(StackSettings.from_env(), args.baseline)
    report = run_soak(Settings.from_env(), args.minutes, args.rate, args.sample_seconds, args.seed, tree)
    warmup = args.warmup_minutes * 60
    summary = report.summary(warmup)
    summary["worker"] = "this checkout" if args.baseline is None else f"commit {args.baseline}"
    print(json.dumps({**summary, "samples": [asdict(s) for s in report.samples]}, indent=2))
    if args.record:
        target = REPO / "docs" / "soak" / "README.md"
        target.parent.mkdir(exist_ok=True)
        if not target.exists():
            target.write_text(
                "# Soak runs\n\nRecorded by `python -m bench.soak --record` (see its docstring).\n\n",
                encoding="utf-8",
            )
        with target.open("a", encoding="utf-8") as out:
            out.write(markdown(summary, report, warmup))
        figures = {
            **summary,
            "commit": commit(),
            "rss_mb_soak_max": summary["rss_mb_after_warmup"]["max"],
        }
        if args.baseline is None:
            record_figures("soak", figures, headline=True)
        else:
            record_figures("soak_baseline", figures, headline=False)
    if not report.exact:
        raise SystemExit("the totals are not exact")


if __name__ == "__main__":
    main()
