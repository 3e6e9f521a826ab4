"""`mkpi tail`: a downstream reader's view of a topic, decoded, from the start or the end, with a
key filter; a topic that does not exist is named with the ones that do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from agents.kafka.connections import kafka_options
from tests.support import REPO, isolated_settings, produce, run_cli

pytestmark = pytest.mark.kafka


async def test_tail_prints_the_committed_messages_decoded_and_filtered_by_key() -> None:
    settings = isolated_settings()
    topic = settings.topics.kpi_updates_topic
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    keys = [json.dumps(["page_views", 60, 0, "*", c]).encode() for c in ("spring", "autumn", "spring")]
    values = [json.dumps({"value": n, "final": False}, indent=2).encode() for n in range(3)]
    await produce(settings, topic, values, keys)

    everything = run_cli(settings, "tail", "kpi-updates", "--from-beginning", "--to-end").splitlines()
    assert everything == [f'0:{n} {keys[n].decode()} {{"value":{n},"final":false}}' for n in range(3)], (
        "one line each, the value as compact JSON"
    )
    spring = run_cli(settings, "tail", topic, "--from-beginning", "--to-end", "--key-filter", '"spring"')
    assert [line.split()[0] for line in spring.splitlines()] == ["0:0", "0:2"]
    assert run_cli(settings, "tail", "kpi-updates", "--from-beginning", "--count", "1").count("\n") == 1

    missing = subprocess.run(  # noqa: ASYNC221 - the test waits for the command, nothing else runs
        [sys.executable, "-m", "mkpi", "tail", "no-such-topic", "--to-end"],
        env={**os.environ, **settings.as_environment()},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "no topic 'no-such-topic'; topics here: " in missing.stderr
