"""Topics are created with the configured replication factor (the real, single-node broker)."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from agents.kafka.connections import kafka_options
from agents.kafka.topics import TopicSetupError, ensure_topics
from tests.support import isolated_settings


async def test_topics_get_the_replication_factor_asked_for() -> None:
    one = isolated_settings(replication_factor=1)
    await ensure_topics(one)
    admin = AIOKafkaAdminClient(**kafka_options(one))
    await admin.start()
    try:
        described = await admin.describe_topics([one.topics.deltas_topic])
    finally:
        await admin.close()
    assert [len(p["replicas"]) for p in described[0]["partitions"]] == [1] * one.topics.partitions
    # One broker cannot hold three copies: the worker stops at start, saying why.
    three = isolated_settings(replication_factor=3)
    with pytest.raises(TopicSetupError, match="InvalidReplicationFactor"):
        await ensure_topics(three)
