"""``python -m bench``: contenders side by side on one pre-loaded topic of realistic events.

Pre-loads ``--events`` generated events (every type, spread over the last two hours of event
time, keyed by subject) once, then runs each contender on that same topic, one after the other,
each in its own process: A and A2 (``bench.contenders``), B, Q, C0 and C, the project's worker
computing the whole catalog, C2, the same as two processes (``MKPI_WORKER_ROLE`` ingest and
agent, so each gets a core), and CR, the same worker told the raw topic is not keyed by
subject (it repartitions first). Reports events/s, CPU seconds per million events and peak RSS
of each, for C0, C, C2 and CR also the CPU per event of the broker and Redis over the run, the
changelog messages written per million events, and the ratios of C to the others. Writes the
JSON to ``--out`` and appends a markdown table with the machine's description to
``docs/benchmarks/README.md``.

B (``bench.naive_faust``) is the naive Faust design: every raw event through a Faust stream, one
windowed-table update per event and measure. Q (``bench.quix_contender``) is the peer a Python
user would pick: Quix Streams counting per (type, campaign) in 1-minute tumbling windows. C0 is
the worker of ``--baseline`` (a commit; by default the last one before state on disk, issue 27),
from a git worktree, with this checkout's virtualenv, and C02 the same as two processes (as C2).

Freshness: on a fresh worker, realistic events at 50% and then 80% of C's measured rate, with a
probe (a page view of a campaign of its own) every half second; a probe's freshness is the time
from its send to its campaign's page views update on the KPI update topic.

Campaign curve: C alone, on fresh topics, for each of ``--campaign-curve`` campaign counts
(10, 1,000, 10,000 and 100,000 by default) on ``--curve-events`` events: how throughput, memory and
deltas per event change with the number of campaigns.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from agents.kafka.connections import kafka_options
from agents.kafka.topics import ensure_topics
from agents.settings import Settings
from bench.peers import baseline_tree, quix_python, unknown_to
from bench.workers import REPO, bench_settings, machine, remove_data
from devtools.generator import Fractions, Scenario, produce_messages
from devtools.stack.cleanup import remove_run_data
from devtools.stack.kafka import KafkaBroker
from devtools.stack.process import wait_for_http
from devtools.stack.redis import LocalRedis
from devtools.stack.settings import StackSettings
from devtools.stack.workers import process_settings, start_worker
from streams.core.subjects import subject_key

RESULTS = REPO / "docs" / "benchmarks"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Result:
    name: str
    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    changelog_messages: int | None = None
    deltas: int | None = None
    #: CPU seconds of the stack's other processes over the run: "broker", "redis".
    stack_cpu_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 2),
            "events_per_second": round(self.events_per_second),
            "cpu_seconds_per_million": round(self.cpu_seconds / self.events * 1e6, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "changelog_messages_per_million": None
            if self.changelog_messages is None
            else round(self.changelog_messages / self.events * 1e6),
            "deltas_per_million": None if self.deltas is None else round(self.deltas / self.events * 1e6),
            "cpu_us_per_event": {
                "worker": round(self.cpu_seconds / self.events * 1e6, 1),
                **{name: round(cpu / self.events * 1e6, 1) for name, cpu in self.stack_cpu_seconds.items()},
            },
        }


async def preload(settings: Settings, events: int, campaigns: int, seed: int) -> None:
    """``events`` messages on the raw topic, journeys spread evenly over two hours ending now."""
    scenario = Scenario(seed, campaigns=campaigns, fractions=Fractions(duplicates=0.02, malformed=0.002))
    start = datetime.now(UTC) - timedelta(hours=2)
    step = 7200 / (events / 4)  # about four messages per journey
    ticks = iter(range(10**12))
    clock = lambda: min(start + timedelta(seconds=next(ticks) * step), datetime.now(UTC))  # noqa: E731
    await produce_messages(settings, scenario.messages(events, clock), rate=None, count=events)


def run_contender(name: str, settings: Settings, events: int) -> Result:
    """A, A2, B or Q in a process of its own; the line of output that starts with
    ``{"events"`` is its measurement (Faust logs to standard output too)."""
    python: str | Path = sys.executable
    if name == "q":
        python, program = quix_python(StackSettings.from_env()), ["bench.quix_contender"]
    else:
        program = ["bench.naive_faust"] if name == "b" else ["bench.contenders", name]
    command = [
        str(python),
        "-m",
        *program,
        settings.kafka.kafka_bootstrap,
        settings.topics.raw_topic,
        str(events),
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = [line for line in process.stdout.read().decode().splitlines() if line.startswith('{"events"')]
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0 or not output:
        raise SystemExit(f"contender {name} failed with status {status}")
    measured = json.loads(output[-1])
    return Result(
        name, measured["events"], measured["seconds"], usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
    )


PROGRESS_METRICS = (
    "mkpi_ingest_messages_total",
    "mkpi_ingest_deltas_total",
    "mkpi_deltas_applied_total",
    "mkpi_deltas_replayed_total",
)


def _metrics(url: str) -> dict[str, float]:
    """The counters C's progress is judged by (only those: a full scrape of a worker with
    thousands of KPI series costs it a noticeable share of a core when polled every second)."""
    query = urllib.parse.urlencode([("name[]", name) for name in PROGRESS_METRICS])
    with urllib.request.urlopen(f"{url}/metrics?{query}", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _stack_cpu(settings: Settings) -> dict[str, float]:
    """CPU seconds so far of the local broker and Redis (those the stack started)."""
    pids = {
        "broker": KafkaBroker.from_settings(settings).running_pid(),
        "redis": LocalRedis.from_settings(settings).running_pid(),
    }
    return {name: _process_cpu_and_peak(pid)[0] for name, pid in pids.items() if pid is not None}


def _process_cpu_and_peak(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    peak_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )
    return cpu, peak_kb / 1024


async def changelog_messages(settings: Settings) -> int:
    topic = settings.topics.kpi_table_changelog_topic
    consumer = AIOKafkaConsumer(**kafka_options(settings))
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]  # as Faust made it
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


PROBES_PER_SECOND = 2


async def probe_freshness(settings: Settings, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """Realistic events at ``rate`` per second for ``seconds``, plus a probe (a page view of a
    campaign of its own) every half second; a probe's freshness is the time from its send to
    the first page views update of its campaign on the KPI update topic."""
    scenario = Scenario(seed, campaigns=50, live=True)
    producer = AIOKafkaProducer(**kafka_options(settings), linger_ms=5, acks=1)
    consumer = AIOKafkaConsumer(
        settings.topics.kpi_updates_topic, **kafka_options(settings), auto_offset_reset="latest"
    )
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    await producer.start()
    await consumer.start()
    await consumer.getmany(timeout_ms=500)  # joined, at the end of the topic

    async def send() -> None:
        events = scenario.messages(None, lambda: datetime.now(UTC))
        started, produced = time.monotonic(), 0
        while (elapsed := time.monotonic() - started) < seconds:
            while produced < elapsed * rate:
                message = next(events)
                await producer.send(settings.topics.raw_topic, message.payload, key=message.key)
                produced += 1
            if len(sent) < elapsed * PROBES_PER_SECOND:
                campaign = f"probe{len(sent):05d}"
                probe = scenario.probe(campaign, datetime.now(UTC))
                await producer.send(settings.topics.raw_topic, probe, key=subject_key(probe))
                sent[campaign] = time.time()
            await asyncio.sleep(0.002)

    async def watch(sending: asyncio.Task[None]) -> None:
        deadline = None
        while deadline is None or (time.monotonic() < deadline and len(seen) < len(sent)):
            if deadline is None and sending.done():
                deadline = time.monotonic() + 30
            for records in (await consumer.getmany(timeout_ms=200)).values():
                now = time.time()
                for record in records:
                    kpi, _, _, channel, campaign = json.loads(record.key or b"[]")
                    if kpi == "page_views" and channel == "*" and campaign in sent and campaign not in seen:
                        seen[campaign] = now

    try:
        sending = asyncio.create_task(send())
        await asyncio.gather(sending, watch(sending))
    finally:
        await producer.stop()
        await consumer.stop()
    delays = sorted(seen[c] - sent[c] for c in seen)
    return {
        "rate": round(rate),
        "probes": len(sent),
        "missing": len(sent) - len(seen),
        "p50_seconds": round(delays[len(delays) // 2], 3) if delays else None,
        "p99_seconds": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))], 3) if delays else None,
    }


def measure_freshness(base: Settings, max_rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """Freshness at 50% and 80% of C's measured rate, on a worker of its own, fresh topics."""
    results = {}
    for share in (50, 80):
        settings = bench_settings(base)
        try:
            asyncio.run(ensure_topics(settings))
            log_path = Path(tempfile.gettempdir()) / f"{settings.topics.topic_prefix}-worker.log"
            print(f"freshness at {share}% of C's rate (worker log: {log_path}) ...", flush=True)
            worker = start_worker(settings, log_path)
            try:
                if not wait_for_http(f"{settings.web.url}/healthz", worker, timeout=120):
                    raise SystemExit(f"the worker did not become healthy; see {log_path}")
                rate = max_rate * share / 100
                results[f"at_{share}_percent"] = asyncio.run(probe_freshness(settings, rate, seconds, seed))
            finally:
                worker.terminate()
                worker.wait(60)
        finally:
            remove_data(settings)
    return results


def run_pipeline(
    settings: Settings,
    events: int,
    log_path: Path,
    name: str = "c",
    tree: Path = REPO,
    ingest_processes: int = 0,
) -> Result:
    """C (or C0, CR, C2): workers on the pre-loaded topic (C2: the agent and
    ``ingest_processes`` ingest workers, as `mkpi run` starts them), from the first ingested
    message until every event is accounted for and every delta folded into the KPI table. CPU
    and peak memory are the workers' together."""
    workers = []
    unknown = () if tree == REPO else unknown_to(tree, settings)
    for own in process_settings(settings, ingest_processes):
        role = own.worker.worker_role
        path = (
            log_path if role == "all" else log_path.with_name(f"{log_path.stem}-{own.worker.worker_name}.log")
        )
        workers.append((own, path, start_worker(own, path, tree, unknown=unknown)))
    try:
        started = cpu_at_start = None
        stack_at_start: dict[str, float] = {}
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            for _, path, worker in workers:
                if worker.poll() is not None:
                    raise SystemExit(f"a worker exited with {worker.returncode}; see {path}")
            try:
                totals: dict[str, float] = {}
                for own, _, _ in workers:
                    for metric, value in _metrics(own.web.url).items():
                        totals[metric] = totals.get(metric, 0.0) + value
            except OSError:
                time.sleep(0.5)
                continue
            ingested = totals.get("mkpi_ingest_messages_total", 0.0)
            if started is None and ingested > 0:
                started, cpu_at_start = time.monotonic(), _workers_cpu_and_peak(workers)[0]
                stack_at_start = _stack_cpu(settings)
            folded = totals.get("mkpi_deltas_applied_total", 0.0) + totals.get(
                "mkpi_deltas_replayed_total", 0.0
            )
            if ingested >= events and folded >= totals.get("mkpi_ingest_deltas_total", 0.0):
                cpu, peak = _workers_cpu_and_peak(workers)
                stack = {
                    k: v - stack_at_start[k] for k, v in _stack_cpu(settings).items() if k in stack_at_start
                }
                assert started is not None and cpu_at_start is not None
                seconds = time.monotonic() - started
                written = asyncio.run(changelog_messages(settings))
                deltas = int(totals.get("mkpi_ingest_deltas_total", 0.0))
                return Result(name, events, seconds, cpu - cpu_at_start, peak, written, deltas, stack)
            time.sleep(1)  # each scrape costs the worker CPU: not too often
        raise SystemExit(f"the workers did not finish within an hour; see {log_path}")
    finally:
        for _, _, worker in workers:
            worker.terminate()
        for _, _, worker in workers:
            worker.wait(60)


def _workers_cpu_and_peak(
    workers: list[tuple[Settings, Path, subprocess.Popen[bytes]]],
) -> tuple[float, float]:
    """CPU seconds and peak resident memory (MB) of the workers, summed."""
    measured = [_process_cpu_and_peak(worker.pid) for _, _, worker in workers]
    return sum(cpu for cpu, _ in measured), sum(peak for _, peak in measured)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"## {report['date']}: {report['events']:,} events, {report['partitions']} partitions",
        "",
        f"Machine: {report['machine']}. Commit {report['commit']}.",
        "",
        "| contender | events/s | CPU s per 1M events | peak RSS MB | changelog messages per 1M events "
        "| deltas per 1M events |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in report["contenders"].items():
        changelog, deltas = result["changelog_messages_per_million"], result["deltas_per_million"]
        lines.append(
            f"| {name} | {result['events_per_second']:,} | {result['cpu_seconds_per_million']} | "
            f"{result['peak_rss_mb']} | {'' if changelog is None else f'{changelog:,}'} "
            f"| {'' if deltas is None else f'{deltas:,}'} |"
        )
    ratios = ", ".join(f"{k} = {v}" for k, v in report["ratios"].items())
    lines += ["", f"Ratios: {ratios}."]
    if curve := report.get("campaign_curve"):
        lines += [
            "",
            f"C alone on {curve[0]['events']:,} events, by number of campaigns:",
            "",
            "| campaigns | events/s | CPU s per 1M events | peak RSS MB | deltas per 1M events |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['campaigns']:,} | {p['events_per_second']:,} | {p['cpu_seconds_per_million']} | "
            f"{p['peak_rss_mb']} | {p['deltas_per_million']:,} |"
            for p in curve
        ]
        lines.append("")
    for name, measured in report.get("freshness", {}).items():
        lines.append(
            f"Freshness {name.replace('_', ' ')} ({measured['rate']:,} events/s): p50 "
            f"{measured['p50_seconds']} s, p99 {measured['p99_seconds']} s over {measured['probes']} "
            f"probes ({measured['missing']} never seen)."
        )
    return "\n".join([*lines, "", ""])


CONTENDERS = ("a", "a2", "b", "q", "c0", "c02", "c", "c2", "cr")
#: The contenders that are mkpi workers (each on topics and groups of its own).
WORKER_CONTENDERS = ("c0", "c02", "c", "c2", "cr")
#: The baseline's workers: C0 as one process, C02 as an agent and an ingest process (as C2).
BASELINE_CONTENDERS = ("c0", "c02")
#: The last commit before state on disk (issue 27): every piece of state in Python memory.
BASELINE_COMMIT = "4f46c06"


def campaign_curve(
    base: Settings, events: int, campaign_counts: list[int], seed: int
) -> list[dict[str, Any]]:
    """C alone on ``events`` events spread over each number of campaigns, fresh topics each."""
    points = []
    for campaigns in campaign_counts:
        settings = bench_settings(base)
        try:
            asyncio.run(ensure_topics(settings))
            print(f"campaign curve: {campaigns:,} campaigns, pre-loading {events:,} events ...", flush=True)
            asyncio.run(preload(settings, events, campaigns, seed))
            log_path = Path(tempfile.gettempdir()) / f"{settings.topics.topic_prefix}-worker.log"
            points.append({"campaigns": campaigns, **run_pipeline(settings, events, log_path).as_json()})
        finally:
            remove_data(settings)
    return points


def run_all(settings: Settings, events: int, contenders: list[str], baseline: str) -> dict[str, Result]:
    """Each contender on the same raw topic; the workers each with topics and groups of their own."""
    results = {}
    for name in contenders:
        if name in WORKER_CONTENDERS:
            own = settings.replace(
                topic_prefix=f"{settings.topics.topic_prefix}{name}",
                worker_name=f"{settings.topics.topic_prefix}-{name}",
                raw_keyed_by_subject=name != "cr",
            )
            on_baseline = name in BASELINE_CONTENDERS
            tree = baseline_tree(StackSettings.from_env(), baseline) if on_baseline else REPO
            log_path = Path(tempfile.gettempdir()) / f"{own.topics.topic_prefix}-worker.log"
            print(f"running {name} (workers of {tree}; their logs: {log_path.parent}) ...", flush=True)
            if not on_baseline:  # the baseline makes its topics as it did
                asyncio.run(ensure_topics(own))
            two_processes = name in ("c2", "c02")
            results[name] = run_pipeline(own, events, log_path, name, tree, 1 if two_processes else 0)
        else:
            print(f"running {name} ...", flush=True)
            results[name] = run_contender(name, settings, events)
    return results


def summary(settings: Settings, events: int, results: dict[str, Result]) -> dict[str, Any]:
    ratios = {}
    if "c" in results:
        c = results["c"].events_per_second
        ratios = {
            f"c_over_{name}": round(c / results[name].events_per_second, 4)
            for name in ("a", "a2", "b", "q", "c0", "c2", "cr")
            if name in results
        }
    if "c2" in results and "c02" in results:
        ratios["c2_over_c02"] = round(results["c2"].events_per_second / results["c02"].events_per_second, 4)
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    changed = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "commit": commit.strip() + (" with uncommitted changes" if changed.strip() else ""),
        "events": events,
        "partitions": settings.topics.partitions,
        "contenders": {name: result.as_json() for name, result in results.items()},
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--campaigns", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "latest.json"), help="where the JSON goes")
    parser.add_argument(
        "--freshness-seconds", type=float, default=60, help="seconds per freshness run (0: skip them)"
    )
    parser.add_argument(
        "--campaign-curve",
        default="10,1000,10000,100000",
        help="campaign counts C runs alone on --curve-events events each, comma-separated ('': skip)",
    )
    parser.add_argument("--curve-events", type=int, default=300_000)
    parser.add_argument(
        "--baseline",
        default=BASELINE_COMMIT,
        help="the commit whose worker is contender C0 (default: %(default)s)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help="which to run, comma-separated; a run of fewer than all is printed, not recorded",
    )
    args = parser.parse_args()
    contenders = [name for name in CONTENDERS if name in args.contenders.split(",")]
    if not contenders:
        parser.error(f"--contenders: choose among {', '.join(CONTENDERS)}")

    base = Settings.from_env({k: v for k, v in os.environ.items() if k.startswith("MKPI_")})
    settings = bench_settings(base)
    try:
        asyncio.run(ensure_topics(settings))
        print(f"pre-loading {args.events:,} events on {settings.topics.raw_topic} ...", flush=True)
        asyncio.run(preload(settings, args.events, args.campaigns, args.seed))
        results = run_all(settings, args.events, contenders, args.baseline)
    finally:
        prefix = settings.topics.topic_prefix
        asyncio.run(remove_run_data(settings, [prefix + name for name in ("", *WORKER_CONTENDERS)]))
        for name in WORKER_CONTENDERS:  # and the contenders' state stores
            own = settings.replace(topic_prefix=prefix + name)
            shutil.rmtree(own.worker_dir.parent, ignore_errors=True)
    report = summary(settings, args.events, results)
    if args.freshness_seconds and "c" in results:
        report["freshness"] = measure_freshness(
            base, results["c"].events_per_second, args.freshness_seconds, args.seed
        )
    if args.campaign_curve:
        counts = [int(n) for n in args.campaign_curve.split(",")]
        report["campaign_curve"] = campaign_curve(base, args.curve_events, counts, args.seed)
    if len(contenders) == len(CONTENDERS):
        RESULTS.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        with open(RESULTS / "README.md", "a", encoding="utf-8") as table:
            table.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
