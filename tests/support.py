"""Helpers shared by integration tests: isolated settings, worker processes, topic readers."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from agents.kafka.connections import kafka_options
from agents.settings import Settings
from devtools.stack.process import free_port
from streams.core.subjects import subject_key

REPO = Path(__file__).resolve().parent.parent


#: The pseudonymization key of every test worker, so tests can compute expected pseudonyms.
TEST_KEY = "mkpi-test-pseudonymization-key-7f3a9c"


def base_settings() -> Settings:
    """The machine's MKPI_* settings, with the test key unless one is set."""
    environ = {k: v for k, v in os.environ.items() if k.startswith("MKPI_")}
    environ.setdefault("MKPI_PSEUDONYMIZATION_KEY", TEST_KEY)
    return Settings.from_env(environ)


#: Topic prefixes handed out by ``isolated_settings`` in this session, cleaned up at its end.
ISSUED_PREFIXES: list[str] = []
#: The workers' folders (state stores) of the tests, one per test's prefix.
TEST_DATA = Path(tempfile.gettempdir()) / "mkpi-test-worker-data"


def isolated_settings(**overrides: object) -> Settings:
    """Settings whose topics, groups, Redis keys and web port belong to one test only."""
    tag = f"t{uuid.uuid4().hex[:10]}"
    ISSUED_PREFIXES.append(tag)
    base = base_settings()
    values: dict[str, object] = {
        "topic_prefix": tag,
        "raw_topic": f"{tag}.raw",
        "web_port": free_port(),
        "worker_name": f"{tag}-w1",
        "data_dir": str(TEST_DATA / tag),
        "flush_interval_seconds": 0.2,
        "kafka_session_timeout_seconds": 10,
        # The tests' producers key raw events by subject, as the generator does; the runs of
        # a raw topic keyed otherwise (through the repartition) say so.
        "raw_keyed_by_subject": True,
    }
    values.update(overrides)
    return base.replace(**values)


def leads_delta(minute: int, campaign: str, leads: int) -> bytes:
    """A delta message as ingest writes it: ``leads`` leads in a minute window, all channels."""
    delta = {
        "window_seconds": 60,
        "window_start": minute,
        "channel": "*",
        "campaign": campaign,
        "measures": {"leads": leads},
    }
    return json.dumps({"schema_version": "2-0-0", "deltas": [delta]}).encode()


class WorkerProcess:
    """One ``mkpi worker`` child process, with its log kept in a file."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker") -> None:
        self.settings = settings
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        env = {**os.environ, **self.settings.as_environment()}
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mkpi", "worker"],
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.settings.web.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"worker not healthy within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.settings.web.url}{path}", timeout=10) as response:
            return json.loads(response.read())

    def metrics_text(self, query: str = "") -> str:
        with urllib.request.urlopen(f"{self.settings.web.url}/metrics{query}", timeout=5) as response:
            return str(response.read().decode())

    def metrics(self, query: str = "") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample on /metrics (``query``: e.g. ``?name[]=...``), keyed by (name, sorted labels)."""
        text = self.metrics_text(query)
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


def run_cli(settings: Settings, *args: str) -> str:
    """Run ``mkpi`` with these settings; return its standard output (fails on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, "-m", "mkpi", *args],
        env={**os.environ, **settings.as_environment()},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def produce(
    settings: Settings, topic: str, payloads: list[bytes | None], keys: list[bytes | None] | None = None
) -> None:
    """Send ``payloads`` in order, keyed by ``keys`` (Kafka's default partitioner), by default
    each by its subject as docs/contracts.md asks producers to. Idempotent, so a batch retried (a new
    topic's leader is not elected yet) cannot land after the batch behind it: expectations
    follow each partition's order."""
    producer = AIOKafkaProducer(
        **kafka_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        futures = []
        for index, payload in enumerate(payloads):
            key = keys[index] if keys is not None else subject_key(payload or b"")
            # A message without a value needs a key (Kafka allows no message with neither).
            if key is None and payload is None:
                key = b"k"
            futures.append(await producer.send(topic, payload, key=key))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic_until(
    settings: Settings,
    topic: str,
    done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout: float,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until ``done(records)`` or the timeout; return all records."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
            if done(records):
                break
    finally:
        await consumer.stop()
    return records


async def produce_in_parts(
    settings: Settings, payloads: list[bytes], keys: list[bytes | None] | None, parts: int, pause: float
) -> None:
    """Send ``payloads`` to the raw topic in ``parts`` equal parts, ``pause`` seconds apart, so
    a fault injected meanwhile lands while messages are still coming (a worker reads a backlog of
    tens of thousands in seconds). Each part follows the last, so partition order is kept."""
    size = math.ceil(len(payloads) / parts)
    for start in range(0, len(payloads), size):
        part_keys = list(keys[start : start + size]) if keys is not None else None
        await produce(settings, settings.topics.raw_topic, list(payloads[start : start + size]), part_keys)
        await asyncio.sleep(pause)


async def read_everything(
    settings: Settings, topics: list[str], isolation: str = "read_committed"
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record currently in ``topics``, up to their end offsets. Read committed by default,
    as docs/contracts.md tells consumers to: ingest's topics are transactional, and a killed worker's aborted
    batch stays in the log."""
    consumer = AIOKafkaConsumer(
        **kafka_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        admin = AIOKafkaAdminClient(**kafka_options(settings))
        await admin.start()
        try:
            described = await admin.describe_topics(topics)
        finally:
            await admin.close()
        partitions = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return records


async def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.3)


async def accounting_totals(settings: Settings) -> dict[str, Counter[str]]:
    """Sums over the ingest accounting topic (committed flushes only)."""
    totals: dict[str, Counter[str]] = {
        "outcomes": Counter(),
        "bad_reasons": Counter(),
        "events_by_type": Counter(),
        "late_by_window": Counter(),
    }
    for record in await read_everything(settings, [settings.topics.accounting_topic]):
        report = json.loads(record.value)
        for part in totals:
            totals[part].update(report.get(part, {}))
    return totals


async def wait_for_accounting(settings: Settings, raw_count: int, timeout: float) -> dict[str, Counter[str]]:
    """Poll the accounting topic until it accounts for ``raw_count`` messages (or time runs out)."""
    deadline = time.monotonic() + timeout
    totals = await accounting_totals(settings)
    while sum(totals["outcomes"].values()) < raw_count and time.monotonic() < deadline:
        await asyncio.sleep(1)
        totals = await accounting_totals(settings)
    return totals
