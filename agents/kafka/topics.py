"""Declare every topic with its partition count before anything reads or writes it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from agents.kafka.connections import kafka_options
from agents.settings import Settings

log = logging.getLogger(__name__)


class TopicSetupError(RuntimeError):
    """The broker refused to create a topic the worker needs."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings, counted_partitions: int | None = None) -> list[TopicSpec]:
    """Every topic; the state journal has a partition per partition of the topic ingest counts
    from (``counted_partitions`` when that topic exists already)."""
    n = settings.topics.partitions
    topics = settings.topics
    journal = TopicSpec(
        topics.state_journal_topic,
        counted_partitions or n,
        # Records go when a newer snapshot is committed (ingest deletes them), never by age.
        {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"},
    )
    by_subject = [] if topics.raw_keyed_by_subject else [TopicSpec(topics.by_subject_topic, n, {})]
    return [
        *by_subject,
        journal,
        TopicSpec(settings.topics.raw_topic, n, {}),
        TopicSpec(settings.topics.deltas_topic, n, {}),
        TopicSpec(settings.topics.bad_rows_topic, n, {}),
        TopicSpec(settings.topics.accounting_topic, 1, {}),
        TopicSpec(settings.topics.kpi_updates_topic, n, {"cleanup.policy": "compact"}),
        TopicSpec(settings.topics.window_results_topic, n, {}),
        TopicSpec(settings.topics.late_events_topic, n, {}),
        TopicSpec(settings.topics.alerts_topic, n, {}),
    ]


async def ensure_topics(settings: Settings) -> None:
    """Create missing topics; warn when an existing one has another partition count."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        existing = {meta["topic"]: len(meta["partitions"]) for meta in await admin.describe_topics()}
        specs = topic_specs(settings, existing.get(settings.topics.counted_topic))
        missing = [spec for spec in specs if spec.name not in existing]
        for spec in specs:
            if spec.name in existing and existing[spec.name] != spec.partitions:
                log.warning(
                    "topic %s has %d partitions, MKPI_PARTITIONS is %d",
                    spec.name,
                    existing[spec.name],
                    spec.partitions,
                )
        if missing:
            replication = settings.topics.replication_factor
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, replication, topic_configs=s.config) for s in missing]
            )
            failures = [
                f"{topic}: {for_code(code).__name__} {message or ''}".strip()
                for topic, code, *rest in response.topic_errors
                for message in [rest[0] if rest else None]
                if code not in (0, TopicAlreadyExistsError.errno)
            ]
            if failures:
                raise TopicSetupError("could not create topics: " + "; ".join(failures))
            log.info("created topics %s", ", ".join(s.name for s in missing))
    finally:
        await admin.close()


class NoSuchTopic(ValueError):
    """A topic to read does not exist."""


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The partitions of ``topic``; ``NoSuchTopic`` (naming the topics there) when it does not exist."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        topics = await admin.list_topics()
        if topic not in topics:
            mine = sorted(t for t in topics if not t.startswith("__"))
            shown = ", ".join(mine[:30]) + (f" and {len(mine) - 30} more" if len(mine) > 30 else "")
            raise NoSuchTopic(f"no topic {topic!r}; topics here: {shown or 'none'}")
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for d in described for p in d["partitions"])
