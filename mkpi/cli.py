"""The ``mkpi`` command: worker, generator, local stack, and the whole job in one go.

The development tools (generator, local stack, schema export) are imported by the commands
that use them, so ``mkpi worker`` never loads them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaConnectionError
from redis.exceptions import RedisError

from agents.kafka.topics import TopicSetupError, ensure_topics
from agents.redis.connections import redis_client
from agents.settings import EMPTY_MEANS, ConfigError, Settings, setting_origins, without_password
from streams.contracts.outputs import BadReason
from streams.core.alerts import AlertRulesError
from streams.core.attribution import RulesError

log = logging.getLogger("mkpi")


def program() -> str:
    """How to call this command again: ``mkpi`` when that is on PATH, else the path it was run by
    (``.venv/bin/mkpi`` after bootstrap)."""
    invoked = sys.argv[0]
    if Path(invoked).name != "mkpi":
        return "mkpi"  # run as ``python -m mkpi``: the installed name is the one to show
    on_path = shutil.which("mkpi")
    if on_path and Path(on_path).resolve() == Path(invoked).resolve():
        return "mkpi"
    relative = os.path.relpath(invoked)
    return invoked if relative.startswith("..") else relative


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.worker.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    settings.validate_for_worker()
    import uvloop

    from agents.runtime.app import create_app, create_ingest_worker_services
    from agents.runtime.table_stores import check_table_stores
    from agents.runtime.worker import BoundedShutdown, BoundedShutdownServices, BoundedShutdownWorker

    # libuv's event loop: Kafka's and Redis's sockets, timers and callbacks cost less per
    # message than on asyncio's own loop.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(ensure_topics(settings))
    if settings.worker.runs_agent:
        asyncio.run(check_table_stores(settings))
    bound, level = settings.worker.shutdown_timeout_seconds, settings.worker.log_level
    worker: BoundedShutdown
    if settings.worker.runs_agent:
        worker = BoundedShutdownWorker(
            create_app(settings), shutdown_timeout_seconds=bound, loglevel=level, quiet=True
        )
    else:
        services = create_ingest_worker_services(settings)
        worker = BoundedShutdownServices(
            *services, shutdown_timeout_seconds=bound, loglevel=level, quiet=True
        )
    worker.execute_from_commandline()
    return 0


def cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    from devtools.generator import STORIES, Fractions, GroundTruth, ProgressBar, Scenario, produce_messages

    fractions = Fractions(
        duplicates=args.duplicates,
        late=args.late,
        malformed=args.malformed,
        shuffle_window=args.shuffle,
        revising=args.revising,
        past_retention=args.past_retention,
    )
    run_nonce = 0 if args.repeat_ids else secrets.randbits(128)
    try:
        scenario = Scenario(
            args.seed,
            campaigns=args.campaigns,
            fractions=fractions,
            grace_seconds=settings.windows.grace_seconds,
            retention_seconds=settings.windows.window_retention_seconds,
            run_nonce=run_nonce,
            live=True,
        )
    except ValueError as exc:
        print(f"mkpi generate: {exc}", file=sys.stderr)
        return 2
    messages = scenario.messages(None, lambda: datetime.now(UTC))
    count: int | None = args.count or None
    if args.story:
        story = STORIES[args.story]
        if args.hours:
            story = dataclasses.replace(story, hours=args.hours)
        start = story.start(datetime.now(UTC))
        messages = story.messages(args.seed, start, settings.windows.grace_seconds, run_nonce)
        count = None
        print(f"story {story.name}: {story.description}; {story.hours} hours from {start:%Y-%m-%d %H:%M}Z")
        for alert in story.expected_alerts(start):
            print(
                f"  expect {alert.status} of {alert.rule} for {alert.campaign}, window between "
                f"{alert.earliest:%m-%d %H:%M}Z and {alert.latest:%m-%d %H:%M}Z"
            )

    async def run() -> GroundTruth:
        await ensure_topics(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        truth, seconds = await produce_messages(
            settings, messages, rate=args.rate or None, count=count, progress=ProgressBar(count), stop=stop
        )
        print(truth.render() + f"\n  in {seconds:.1f}s ({truth.raw / max(seconds, 1e-9):.0f}/s)")
        return truth

    truth = asyncio.run(run())
    if args.truth:
        Path(args.truth).write_text(json.dumps(truth.as_json(), indent=2) + "\n", encoding="utf-8")
        print(f"ground truth written to {args.truth}")
    return 0


def cmd_stack(settings: Settings, args: argparse.Namespace) -> int:
    from devtools.stack.process import StackError

    try:
        return _stack(settings, args.action)
    except StackError as exc:
        print(f"mkpi: {exc}", file=sys.stderr)
        return 1


def _stack(settings: Settings, action: str) -> int:
    from devtools.stack.kafka import KafkaBroker
    from devtools.stack.redis import LocalRedis
    from devtools.stack.settings import StackSettings

    stack = StackSettings.from_env()
    broker = KafkaBroker.from_settings(settings, stack)
    redis_server = LocalRedis.from_settings(settings, stack)
    if action == "install":
        broker.install()
        print(f"Apache Kafka {broker.version} jars are in {broker.libs_dir}")
    elif action == "up":
        print(broker.start())
        print(redis_server.start())
    elif action == "down":
        print(broker.stop())
        print(redis_server.stop())
    else:
        kafka_ready, redis_ready = broker.is_ready(), redis_server.is_ready()
        print(f"kafka  {broker.bootstrap}: {'ready' if kafka_ready else 'not answering'}")
        print(f"redis  {without_password(redis_server.url)}: {'ready' if redis_ready else 'not answering'}")
        return 0 if kafka_ready and redis_ready else 1
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Stack up, the workers in child processes, generator in this one; Ctrl-C stops them all."""
    from devtools.stack.settings import StackSettings
    from devtools.stack.workers import LocalWorkers, default_ingest_processes

    settings.validate_for_worker()
    if cmd_stack(settings, argparse.Namespace(action="up")):
        return 1
    ingest_processes = default_ingest_processes() if args.ingest_processes is None else args.ingest_processes
    workers = LocalWorkers(settings, ingest_processes, StackSettings.from_env().home / "logs")
    workers.start()
    try:
        if (unhealthy := workers.unhealthy(timeout=120)) is not None:
            print(
                f"the worker {unhealthy.label} did not become healthy; see {unhealthy.log_path}",
                file=sys.stderr,
            )
            return 1
        if (waiting := workers.wait_ready(timeout=600, say=print)) is not None:
            print(
                f"the worker {waiting.label} is still not ready after 10 minutes; going on (see "
                f"{waiting.log_path})",
                file=sys.stderr,
            )
        processes = "\n".join(
            f"                {worker.label} ({worker.settings.worker.worker_role}): "
            f"{worker.settings.web.url}/metrics, log {worker.log_path}"
            for worker in workers.workers
        )
        print(
            "\nmkpi is running.\n"
            f"  live board:   {settings.web.url}/board\n"
            f"  metrics:      {settings.web.url}/metrics   (look for mkpi_kpi_current)\n"
            f"  workers:\n{processes}\n"
            f"  query:        {program()} query --kpi organic_traffic   or   {settings.web.url}/api/kpis\n"
            f"  KPI topic:    {settings.topics.kpi_updates_topic} on {settings.kafka.kafka_bootstrap}\n"
            f"  raw events:   {settings.topics.raw_topic}   bad rows: {settings.topics.bad_rows_topic}\n"
            "  stop:         Ctrl-C (stops the generator and the workers); "
            f"'{program()} stack down' stops Kafka and Redis\n",
            flush=True,
        )
        return cmd_generate(settings, args)
    finally:
        workers.stop(grace_seconds=30)


def cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from devtools import schema_export

    return _generated(
        Path(args.dir), args.check, "schemas", schema_export.stale_files, schema_export.write_all
    )


def cmd_dashboards(settings: Settings, args: argparse.Namespace) -> int:
    from devtools import dashboards

    return _generated(Path(args.dir), args.check, "dashboards", dashboards.stale_files, dashboards.write_all)


def _generated(
    root: Path,
    check: bool,
    command: str,
    stale_files: Callable[[Path], list[str]],
    write_all: Callable[[Path], list[str]],
) -> int:
    """Rewrite files generated from the code under ``root``, or (``check``) list the stale ones."""
    if check:
        stale = stale_files(root)
        for path in stale:
            print(f"stale: {root / path} (run 'mkpi {command}' to rewrite it)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_all(root):
        print(f"wrote {root / path}")
    return 0


#: mkpi's topics by the short names ``mkpi tail`` takes (the part after the prefix).
TOPIC_SHORT_NAMES = (
    "raw",
    "kpi-updates",
    "kpi-windows",
    "alerts",
    "bad-rows",
    "late-events",
    "ingest-accounting",
)


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    """Print a topic's committed messages, decoded, one per line."""
    from agents.kafka.tail import tail
    from agents.kafka.topics import NoSuchTopic

    topics = settings.topics
    named = dict(
        zip(
            TOPIC_SHORT_NAMES,
            (
                topics.raw_topic,
                topics.kpi_updates_topic,
                topics.window_results_topic,
                topics.alerts_topic,
                topics.bad_rows_topic,
                topics.late_events_topic,
                topics.accounting_topic,
            ),
            strict=True,
        )
    )
    try:
        asyncio.run(
            tail(
                settings,
                named.get(args.topic, args.topic),
                from_beginning=args.from_beginning,
                to_end=args.to_end,
                key_filter=args.key_filter,
                count=args.count,
                out=lambda line: print(line, flush=True),
            )
        )
    except NoSuchTopic as exc:
        print(f"mkpi tail: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_query(settings: Settings, args: argparse.Namespace) -> int:
    """Print the newest KPI values from the Redis view, filtered."""
    import msgspec

    from agents.redis.view import RedisView, ViewQuery, render_table
    from streams.contracts.deltas import ALL, ALL_TIME
    from streams.core.attribution import ChannelRules
    from streams.core.cells import KPI_NAMES

    sizes = (*settings.windows.windowing.sizes, ALL_TIME)
    window = sizes[0] if args.window is None else args.window
    if window not in sizes:
        print(f"mkpi query: --window must be one of {', '.join(map(str, sizes))}", file=sys.stderr)
        return 2
    rules = ChannelRules.configured(settings.ingest.channel_rules_file)
    for option, value, known in (
        ("--kpi", args.kpi, KPI_NAMES),
        ("--channel", args.channel, rules.channels | {ALL}),
    ):
        if value is not None and value not in known:
            print(
                f"mkpi query: {option} {value!r} is unknown; one of {', '.join(sorted(known))}",
                file=sys.stderr,
            )
            return 2

    async def run() -> list[Any]:
        client = redis_client(settings)
        try:
            view = RedisView(client, settings.topics.topic_prefix)
            query = ViewQuery(window, args.kpi, args.channel, args.campaign)
            return await view.latest(query, KPI_NAMES, rules.channels | {ALL})
        finally:
            await client.aclose()

    updates = asyncio.run(run())
    print(msgspec.json.encode(updates).decode() if args.json else render_table(updates))
    return 0


def cmd_replay_bad_rows(settings: Settings, args: argparse.Namespace) -> int:
    """Send the bad rows of one reason back to where they were read, once."""
    from agents.kafka.replay import replay_bad_rows

    reason = BadReason(args.reason)
    report = asyncio.run(replay_bad_rows(settings, reason, dry_run=args.dry_run))
    verb = "would send" if args.dry_run else "sent"
    total = sum(report.replayed.values())
    print(
        f"{reason.value}: {verb} {total} bad rows again"
        + "".join(f", {n} to {t}" for t, n in report.replayed.items())
    )
    for why, count in report.skipped.items():
        print(f"  skipped {count}: {why}")
    print(f"  passed over {report.other_reasons} bad rows of other reasons")
    return 0


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """Every effective setting, secrets masked, with where it comes from and, when empty,
    what that means."""
    origins = setting_origins()
    for name, value in settings.redacted().items():
        meaning = f"; empty: {EMPTY_MEANS[name]}" if not value and name in EMPTY_MEANS else ""
        print(f"MKPI_{name.upper()}={value}  # {origins[name]}{meaning}")
    return 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return value


def build_parser(stories: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line; ``stories`` (name -> description) are the generator's, given only
    when the command is ``generate``."""
    parser = argparse.ArgumentParser(
        prog="mkpi",
        description="Live marketing KPIs from Kafka event streams. Settings come from MKPI_* "
        "environment variables (see docs/configuration.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a stream worker (ingest, KPI tables, /metrics)")

    def add_generator_options(p: argparse.ArgumentParser, rate: float, count: int, dirt: float) -> None:
        p.add_argument("--seed", type=int, default=1, help="random seed (same seed, same traffic)")
        p.add_argument(
            "--repeat-ids",
            action="store_true",
            help="the seed's own event ids, the same every run (a worker that saw them drops them as "
            "duplicates); by default every run's ids are new",
        )
        p.add_argument("--rate", type=float, default=rate, help="messages per second, 0 for flat out")
        p.add_argument("--count", type=int, default=count, help="messages to send, 0 for no limit")
        p.add_argument("--campaigns", type=int, default=6, help="number of distinct campaigns")
        p.add_argument("--duplicates", type=float, default=dirt, help="share of events resent (retries)")
        p.add_argument("--late", type=float, default=dirt, help="share of journeys late within the grace")
        p.add_argument(
            "--revising", type=float, default=0.0, help="share of journeys late past grace, within retention"
        )
        p.add_argument(
            "--past-retention", type=float, default=0.0, help="share of journeys late past retention"
        )
        p.add_argument("--malformed", type=float, default=dirt / 4, help="share of malformed messages")
        p.add_argument("--shuffle", type=int, default=50, help="shuffle messages within windows of N")
        p.add_argument("--truth", help="write the expected accounting (JSON) to this file")

    generate = sub.add_parser("generate", help="send realistic raw events")
    add_generator_options(generate, 1000.0, 10000, 0.0)
    generate.add_argument(
        "--story",
        choices=sorted(stories or {}),
        help="hours of event time ending an hour ago, shaped to test drop alerts (--count ignored): "
        # argparse formats help with %: a story's "60%" must reach it as "60%%".
        + "; ".join(
            f"{name}: {description}".replace("%", "%%") for name, description in (stories or {}).items()
        ),
    )
    generate.add_argument("--hours", type=int, default=0, help="shorten or lengthen the --story")
    stack = sub.add_parser("stack", help="the local Kafka broker and Redis server")
    stack.add_argument("action", choices=["up", "down", "status", "install"])
    run = sub.add_parser("run", help="stack + workers + generator, until Ctrl-C")
    run.add_argument(
        "--ingest-processes",
        type=_non_negative_int,
        help="ingest processes beside the KPI agent (default: one per core but one; 0: a single "
        "worker running both)",
    )
    add_generator_options(run, 200.0, 0, 0.02)
    run.set_defaults(story=None, hours=0)  # live traffic, never a story
    query = sub.add_parser("query", help="the newest KPI values from the Redis view, as a table")
    query.add_argument(
        "--window", type=int, help="window size in seconds (default: the smallest; 0: running totals)"
    )
    query.add_argument("--kpi", help="only this KPI (e.g. organic_traffic)")
    query.add_argument("--channel", help="only this channel ('*' for the all-channel roll-up)")
    query.add_argument("--campaign", help="only this campaign ('*' for the all-campaign roll-up)")
    query.add_argument("--json", action="store_true", help="JSON instead of a table")
    replay = sub.add_parser(
        "replay-bad-rows",
        help="send the bad rows of one reason back to the raw topic once their cause is fixed",
    )
    replay.add_argument("--reason", required=True, choices=[reason.value for reason in BadReason])
    replay.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")
    tail = sub.add_parser(
        "tail",
        help="print a topic's committed messages, decoded, one per line (as a downstream reader sees them)",
    )
    tail.add_argument(
        "topic",
        help="a topic name, or one of mkpi's by its short name: " + ", ".join(TOPIC_SHORT_NAMES),
    )
    tail.add_argument("--from-beginning", action="store_true", help="from the topic's start, not its end")
    tail.add_argument("--to-end", action="store_true", help="stop at the end instead of following")
    tail.add_argument("--key-filter", help="only messages whose key contains this text")
    tail.add_argument("--count", type=_non_negative_int, help="stop after this many messages")
    sub.add_parser("config", help="print the effective settings (secrets masked)")
    schemas = sub.add_parser("schemas", help="write the JSON Schemas of events and outputs from the models")
    schemas.add_argument("--dir", default="schemas", help="schemas folder (default: ./schemas)")
    schemas.add_argument("--check", action="store_true", help="only report files that are out of date")
    dashboards = sub.add_parser(
        "dashboards", help="write the Grafana dashboards of the KPIs (overview, campaign, roles)"
    )
    dashboards.add_argument(
        "--dir", default="deploy/grafana/dashboards", help="dashboards folder (default: %(default)s)"
    )
    dashboards.add_argument("--check", action="store_true", help="only report files that are out of date")
    return parser


COMMANDS = {
    "worker": cmd_worker,
    "generate": cmd_generate,
    "stack": cmd_stack,
    "run": cmd_run,
    "config": cmd_config,
    "schemas": cmd_schemas,
    "dashboards": cmd_dashboards,
    "query": cmd_query,
    "replay-bad-rows": cmd_replay_bad_rows,
    "tail": cmd_tail,
}


def _stories_for(argv: Sequence[str]) -> dict[str, str] | None:
    """The generator's stories when the command takes one (loading the generator), else None."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command != "generate":
        return None
    from devtools.generator import STORIES

    return {name: story.description for name, story in STORIES.items()}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_stories_for(arguments)).parse_args(arguments)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"mkpi: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    try:
        status = COMMANDS[args.command](settings, args)
        sys.stdout.flush()  # here, so a reader gone away is a BrokenPipeError below
        return status
    except ConfigError as exc:
        print(f"mkpi: {exc}", file=sys.stderr)
        return 2
    except (TopicSetupError, RulesError, AlertRulesError) as exc:
        print(f"mkpi: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        redis_url = without_password(settings.redis.redis_url)
        print(f"mkpi: cannot use Redis at {redis_url} ({exc}); fix MKPI_REDIS_URL", file=sys.stderr)
        return 1
    except KafkaConnectionError as exc:
        print(
            f"mkpi: cannot reach Kafka at {settings.kafka.kafka_bootstrap} ({exc}); start it with "
            f"'{program()} stack up' or fix MKPI_KAFKA_BOOTSTRAP",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`mkpi query --json | head`): nothing left to say, and nowhere
        # to say it. Point stdout at /dev/null so the interpreter's last flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell tool killed by it
