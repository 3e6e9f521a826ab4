"""Nothing lost: every raw message is counted once as valid, a bad row, or a duplicate.

The expected accounting comes from the generator's labels (tests/devtools/test_generator.py
checks those labels against the decoder); the actual one is read back from the real broker:
the ingest accounting topic, the bad-row topic and /metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from agents.kafka.connections import kafka_options
from agents.kafka.topics import ensure_topics
from agents.settings import Settings
from devtools.generator import Fractions, GroundTruth, Message, Scenario
from devtools.stack.process import free_port
from tests.support import (
    WorkerProcess,
    accounting_totals,
    isolated_settings,
    produce,
    produce_in_parts,
    read_everything,
    wait_for_accounting,
    wait_until,
)

pytestmark = pytest.mark.kafka


def now() -> datetime:
    return datetime.now(UTC)


def truth_of(messages: list[Message]) -> GroundTruth:
    truth = GroundTruth()
    for message in messages:
        truth.add(message)
    return truth


async def test_ten_thousand_malformed_payloads_mixed_with_valid_ones(tmp_path: Path) -> None:
    settings = isolated_settings()
    scenario = Scenario(
        21, fractions=Fractions(duplicates=0.05, late=0.05, malformed=0.75, shuffle_window=100)
    )
    messages: list[Message] = []
    for message in scenario.messages(None, now):
        messages.append(message)
        if sum(m.expect not in ("valid", "duplicate") for m in messages) >= 10_000:
            break
    truth = truth_of(messages)
    payloads: list[bytes | None] = [m.payload for m in messages]
    payloads += [None] * 5  # tombstone-style messages without a value
    truth.raw += 5
    truth.outcomes["bad"] += 5
    truth.bad_reasons["not_json"] += 5
    assert truth.outcomes["bad"] >= 10_000 and len(truth.bad_reasons) == 7

    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        await produce(settings, settings.topics.raw_topic, payloads)
        totals = await wait_for_accounting(settings, truth.raw, timeout=180)
        assert totals["outcomes"] == truth.outcomes, worker.log_tail()
        assert totals["bad_reasons"] == truth.bad_reasons
        assert totals["events_by_type"] == truth.valid_by_type

        rows = [
            json.loads(r.value) for r in await read_everything(settings, [settings.topics.bad_rows_topic])
        ]
        assert Counter(row["reason"] for row in rows) == truth.bad_reasons
        assert len({(row["source_partition"], row["source_offset"]) for row in rows}) == len(rows)

        samples = worker.metrics()
        for outcome, count in truth.outcomes.items():
            assert samples[("mkpi_ingest_messages_total", (("outcome", outcome),))] == count
        for reason, count in truth.bad_reasons.items():
            assert samples[("mkpi_ingest_bad_rows_total", (("reason", reason),))] == count
        assert worker.process is not None and worker.process.poll() is None, (
            "the worker must survive every input"
        )
    finally:
        worker.stop()


async def test_exact_accounting_across_sigkill_and_restart(tmp_path: Path) -> None:
    """Messages re-read after a crash count once: not zero times (as 'duplicates'), not twice."""
    settings = isolated_settings(ingest_max_records=500)
    scenario = Scenario(33, fractions=Fractions(duplicates=0.1, late=0.05, malformed=0.05, shuffle_window=50))
    messages = list(scenario.messages(30_000, now))
    truth = truth_of(messages)
    await ensure_topics(settings)
    # Sent over ~20 s, so the kill lands while messages are still coming (a worker reads a
    # backlog of 30,000 in a few seconds).
    producing = asyncio.create_task(produce_in_parts(settings, [m.payload for m in messages], None, 30, 0.7))

    for attempt in range(2):
        worker = WorkerProcess(settings, tmp_path, name=f"worker-{attempt}")
        worker.start()
        if attempt == 0:
            await wait_for_accounting(settings, 5_000, timeout=120)
            worker.kill()
            done = sum((await accounting_totals(settings))["outcomes"].values())
            assert 0 < done < truth.raw, "the kill must land mid-stream"
    await producing
    try:
        totals = await wait_for_accounting(settings, truth.raw, timeout=180)
        assert totals["outcomes"] == truth.outcomes, worker.log_tail()
        assert totals["bad_reasons"] == truth.bad_reasons
        assert totals["events_by_type"] == truth.valid_by_type
    finally:
        worker.stop()


async def test_two_workers_split_the_raw_topic_and_share_the_duplicate_memory(tmp_path: Path) -> None:
    """Retries land on other partitions than their originals, so each worker meets duplicates
    of events the other one counted."""
    settings = isolated_settings(partitions=4)
    scenario = Scenario(44, fractions=Fractions(duplicates=0.2, malformed=0.02, shuffle_window=20))
    messages = list(scenario.messages(12_000, now))
    truth = truth_of(messages)
    await ensure_topics(settings)
    workers = [
        WorkerProcess(settings.replace(worker_name=f"w{i}", web_port=free_port()), tmp_path, f"w{i}")
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:  # both ingest consumers have joined and split the partitions
            await wait_until(lambda w=worker: w.metrics()[("mkpi_ingest_assigned_partitions", ())] == 2, 60)
        await produce(settings, settings.topics.raw_topic, [m.payload for m in messages])
        totals = await wait_for_accounting(settings, truth.raw, timeout=180)
        assert totals["outcomes"] == truth.outcomes, workers[0].log_tail()
        assert totals["events_by_type"] == truth.valid_by_type
        reports = [
            json.loads(r.value) for r in await read_everything(settings, [settings.topics.accounting_topic])
        ]
        assert {report["worker"] for report in reports} == {
            f"{settings.topics.app_id}-ingest-w0",
            f"{settings.topics.app_id}-ingest-w1",
        }
    finally:
        for worker in workers:
            worker.stop()


async def set_topic_config(settings: Settings, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    finally:
        await admin.close()


async def test_a_topic_refusing_a_message_holds_its_flush_until_it_takes_it(tmp_path: Path) -> None:
    """The bad-row topic takes at most 2 KiB per batch: ingest's flushes with larger bad rows are
    aborted with an error saying what to raise, and nothing is committed past them (aiokafka
    would commit a transaction whose send failed); with the limit raised, everything counts
    exactly once."""
    settings = isolated_settings()
    messages = list(
        Scenario(55, fractions=Fractions(duplicates=0.05, shuffle_window=20)).messages(2_000, now)
    )
    truth = truth_of(messages)
    oversized = [b"{" + f"{n:04d}".encode() + b"x" * 3000 for n in range(5)]  # ~3 KB bad rows
    truth.raw += len(oversized)
    truth.outcomes["bad"] += len(oversized)
    truth.bad_reasons["not_json"] += len(oversized)
    await ensure_topics(settings)
    await set_topic_config(settings, settings.topics.bad_rows_topic, {"max.message.bytes": "2048"})
    payloads = [m.payload for m in messages]
    await produce(settings, settings.topics.raw_topic, [*payloads[:1000], *oversized, *payloads[1000:]])

    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    refused = ("mkpi_ingest_refused_messages_total", (("topic", settings.topics.bad_rows_topic),))
    try:
        await wait_until(lambda: worker.metrics().get(refused, 0) >= 2, timeout=60)
        log_text = worker.log_path.read_text(errors="replace")
        assert f"{settings.topics.bad_rows_topic} refused a message from ingest" in log_text
        assert "raise the topic's max.message.bytes" in log_text
        held = sum((await accounting_totals(settings))["outcomes"].values())
        assert held < truth.raw, "nothing is committed past the refused flush"
        assert worker.process is not None and worker.process.poll() is None, "the worker keeps going"

        await set_topic_config(
            settings, settings.topics.bad_rows_topic, {"max.message.bytes": str(1024 * 1024)}
        )
        totals = await wait_for_accounting(settings, truth.raw, timeout=120)
        assert totals["outcomes"] == truth.outcomes, worker.log_tail()
        assert totals["bad_reasons"] == truth.bad_reasons
        bad_rows = [
            json.loads(r.value) for r in await read_everything(settings, [settings.topics.bad_rows_topic])
        ]
        big = sorted(row["payload"][:5] for row in bad_rows if len(row["payload"]) > 3000)
        assert big == sorted(p[:5].decode() for p in oversized), "each oversized bad row once"
    finally:
        worker.stop()
