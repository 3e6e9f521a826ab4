"""Security settings against the real local services: Kafka over SASL_SSL with SCRAM and over
SSL with a client certificate (the local broker's extra listeners), and Redis with an ACL user
over TLS (a redis-server of the test's own). A worker configured for them counts exactly, and
no secret reaches its log."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from agents.kafka.connections import kafka_options
from agents.kafka.topics import ensure_topics
from agents.redis.connections import sync_redis_client
from agents.settings import Settings
from devtools.generator import VALID, Fractions, GroundTruth, Scenario
from devtools.stack.kafka import KafkaBroker
from devtools.stack.process import free_port
from streams.contracts.deltas import ALL, ALL_TIME
from tests.support import (
    WorkerProcess,
    isolated_settings,
    produce,
    read_everything,
    wait_for_accounting,
)

pytestmark = pytest.mark.kafka


@dataclasses.dataclass(frozen=True)
class TlsRedis:
    url: str
    password: str


@pytest.fixture
def tls_redis(tmp_path: Path, local_stack: Settings) -> Iterator[TlsRedis]:
    """redis-server on a free port that speaks only TLS and knows only one ACL user."""
    tls = KafkaBroker.from_settings(local_stack).tls.ensure()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port, password = free_port(), secrets.token_urlsafe(18)
    config = tmp_path / "redis-tls.conf"
    config.write_text(
        "\n".join(
            [
                "port 0",
                f"tls-port {port}",
                "bind 127.0.0.1",
                f"tls-cert-file {tls.server_cert_file}",
                f"tls-key-file {tls.server_key_file}",
                f"tls-ca-cert-file {tls.ca_file}",
                "tls-auth-clients no",
                'save ""',
                "appendonly no",
                f"dir {tmp_path}",
                "user default off",
                # Keys of mkpi prefixes only (every isolated test prefix starts with "t").
                f"user mkpi-worker on >{password} ~t*:* +@all",
                "",
            ]
        ),
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [server, str(config)], stdout=(tmp_path / "redis-tls.log").open("wb"), stderr=subprocess.STDOUT
    )
    redis = TlsRedis(f"rediss://mkpi-worker:{password}@127.0.0.1:{port}/0", password)
    settings = local_stack.replace(redis_url=redis.url, redis_tls_ca_file=str(tls.ca_file))
    deadline = time.monotonic() + 20
    while True:
        client = sync_redis_client(settings, socket_timeout=1, socket_connect_timeout=1)
        try:
            if client.ping():
                break
        except (RedisError, OSError) as exc:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"TLS redis-server did not answer: {exc}") from exc
            time.sleep(0.2)
        finally:
            client.close()
    yield redis
    process.terminate()
    process.wait(10)


def sasl_ssl_settings(local_stack: Settings, **overrides: object) -> Settings:
    broker = KafkaBroker.from_settings(local_stack)
    user, password = broker.scram_credentials()
    values: dict[str, object] = {
        "kafka_bootstrap": f"127.0.0.1:{KafkaBroker.from_settings(local_stack).sasl_ssl_port}",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": user,
        "kafka_sasl_password": password,
        "kafka_tls_ca_file": str(broker.tls.ca_file),
    }
    values.update(overrides)
    settings = isolated_settings(**values)
    settings.validate()
    return settings


async def test_a_worker_on_sasl_ssl_kafka_and_tls_redis_counts_exactly_and_logs_no_secret(
    tmp_path: Path, local_stack: Settings, tls_redis: TlsRedis
) -> None:
    ca_file = KafkaBroker.from_settings(local_stack).tls.ca_file
    settings = sasl_ssl_settings(
        local_stack,
        redis_url=tls_redis.url,
        redis_tls_ca_file=str(ca_file),
        pseudonymization_key=secrets.token_hex(16),
    )
    scenario = Scenario(91, fractions=Fractions(duplicates=0.05, late=0.0, malformed=0.05, shuffle_window=20))
    messages = list(scenario.messages(3_000, lambda: datetime.now(UTC)))
    truth = GroundTruth()
    for message in messages:
        truth.add(message)
    # The running total of net subscribers per channel, all campaigns: computed from the truth.
    net_subscribers: Counter[str | None] = Counter()
    for m in messages:
        if m.expect == VALID and m.event_type in ("subscribe", "unsubscribe"):
            net_subscribers[m.channel] += 1 if m.event_type == "subscribe" else -1
    net_subscribers[ALL] = sum(net_subscribers.values())
    assert net_subscribers[ALL] > 0, "the data has subscriptions"
    await ensure_topics(settings)
    await produce(
        settings, settings.topics.raw_topic, [m.payload for m in messages], [m.key for m in messages]
    )

    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        totals = await wait_for_accounting(settings, truth.raw, timeout=120)
        assert totals["outcomes"] == truth.outcomes, worker.log_tail()
        served: dict[str | None, int] = {}
        for _ in range(30):  # the view (in the TLS Redis) follows the KPI agent
            updates = worker.get_json(f"/api/kpis?window={ALL_TIME}&kpi=net_subscribers&campaign={ALL}")
            served = {u["channel"]: u["value"] for u in updates}
            if served == net_subscribers:
                break
            await asyncio.sleep(1)
        assert served == net_subscribers
    finally:
        assert worker.stop() == 0, worker.log_tail()
    log_text = worker.log_path.read_text(errors="replace")
    assert settings.kafka.kafka_sasl_password not in log_text
    assert tls_redis.password not in log_text
    assert settings.ingest.pseudonymization_key not in log_text


async def test_the_ssl_listener_takes_a_client_certificate_and_refuses_a_client_without_one(
    local_stack: Settings,
) -> None:
    tls = KafkaBroker.from_settings(local_stack).tls
    with_certificate = isolated_settings(
        kafka_bootstrap=f"127.0.0.1:{KafkaBroker.from_settings(local_stack).ssl_port}",
        kafka_security_protocol="SSL",
        kafka_tls_ca_file=str(tls.ca_file),
        kafka_tls_cert_file=str(tls.client_cert_file),
        kafka_tls_key_file=str(tls.client_key_file),
    )
    with_certificate.validate()
    await ensure_topics(with_certificate)
    payloads = [f"message {n}".encode() for n in range(50)]
    await produce(with_certificate, with_certificate.topics.raw_topic, list(payloads))
    records = await read_everything(with_certificate, [with_certificate.topics.raw_topic])
    assert sorted(r.value for r in records if r.value is not None) == sorted(payloads)

    without_certificate = with_certificate.replace(kafka_tls_cert_file="", kafka_tls_key_file="")
    admin = AIOKafkaAdminClient(**kafka_options(without_certificate), request_timeout_ms=5000)
    with pytest.raises((KafkaError, OSError, TimeoutError)):
        await asyncio.wait_for(admin.start(), 20)
    await admin.close()
