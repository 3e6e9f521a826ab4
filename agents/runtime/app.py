"""create_app(settings): the Faust application with its topics, table, agent and services."""

from __future__ import annotations

import socket
from pathlib import Path

import faust

from agents.kafka.connections import faust_credentials
from agents.kafka.transport import URL_SCHEME
from agents.metrics.registry import Metrics
from agents.runtime.health import Health
from agents.runtime.ingest import IngestService
from agents.runtime.kpi_agent import register_kpi_agent
from agents.runtime.repartition import RepartitionService
from agents.runtime.web import WebServer
from agents.settings import Settings
from streams.core.alerts import configured_rules
from streams.core.attribution import ChannelRules
from streams.core.privacy import Pseudonymizer

KPI_TABLE_NAME = "kpi-values"


def create_app(settings: Settings, metrics: Metrics | None = None) -> faust.App:
    metrics = metrics or Metrics()
    datadir = Path(settings.stack.stack_dir) / "worker-data" / settings.topics.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.topics.app_id,
        broker=f"{URL_SCHEME}://{settings.kafka.bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka.session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka.session_timeout_seconds / 10,
        web_enabled=True,
        web_host=settings.web.host,
        web_port=settings.web.port,
        key_serializer="raw",
        value_serializer="raw",
    )
    deltas = app.topic(
        settings.topics.deltas_topic, partitions=settings.topics.partitions, key_type=bytes, value_type=bytes
    )
    alert_rules = configured_rules(settings.alerts.rules_file, settings.windows.windowing.sizes)
    table = app.Table(KPI_TABLE_NAME, partitions=settings.topics.partitions, key_type=bytes, value_type=bytes)
    agent = register_kpi_agent(app, deltas, table, metrics, settings, alert_rules)
    rules = ChannelRules.configured(settings.ingest.channel_rules_file)
    worker_name = settings.worker.worker_name or socket.gethostname()
    pseudonymizer = Pseudonymizer.from_key(settings.ingest.pseudonymization_key)
    if not settings.topics.raw_keyed_by_subject:
        app.service(RepartitionService(settings, metrics, worker_name, pseudonymizer))  # type: ignore[arg-type]
    ingest = IngestService(
        settings,
        metrics,
        worker_name=worker_name,
        rules=rules,
        pseudonymizer=pseudonymizer,
        agent_is_behind=agent.is_behind,
    )
    app.service(ingest)  # type: ignore[arg-type]
    health = Health(
        ingest_partitions=lambda: ingest.owned_partitions,
        agent_recovering=lambda: bool(app.rebalancing or getattr(app, "in_recovery", False)),
    )
    app.web_server(WebServer(settings, metrics, rules.channels, health))
    return app
