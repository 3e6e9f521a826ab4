"""create_app(settings): the Faust application with its topics, table, agent and services."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import faust
from mode import Service

from agents.kafka.connections import faust_credentials
from agents.kafka.transport import URL_SCHEME
from agents.metrics.registry import Metrics
from agents.runtime.health import Health
from agents.runtime.ingest import IngestService
from agents.runtime.kpi_agent import register_kpi_agent
from agents.runtime.repartition import RepartitionService
from agents.runtime.web import WebServer
from agents.settings import KPI_TABLE_NAME, Settings
from agents.state.rocks import table_options
from streams.core.alerts import configured_rules
from streams.core.attribution import ChannelRules
from streams.core.privacy import Pseudonymizer


def create_app(settings: Settings, metrics: Metrics | None = None) -> faust.App:
    """The Faust worker of role ``all`` (ingest and the KPI agent) or ``agent``."""
    metrics = metrics or Metrics()
    datadir = settings.worker_dir
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.topics.app_id,
        broker=f"{URL_SCHEME}://{settings.kafka.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka.kafka_session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka.kafka_session_timeout_seconds / 10,
        web_enabled=True,
        web_host=settings.web.web_host,
        web_port=settings.web.web_port,
        key_serializer="raw",
        value_serializer="raw",
    )
    deltas = app.topic(
        settings.topics.deltas_topic, partitions=settings.topics.partitions, key_type=bytes, value_type=bytes
    )
    alert_rules = configured_rules(settings.alerts.alert_rules_file, settings.windows.windowing.sizes)
    table = app.Table(
        KPI_TABLE_NAME,
        partitions=settings.topics.partitions,
        key_type=bytes,
        value_type=bytes,
        options=table_options(settings),
    )
    agent = register_kpi_agent(app, deltas, table, metrics, settings, alert_rules)
    rules = ChannelRules.configured(settings.ingest.channel_rules_file)
    owned: Callable[[], int] | None = None
    restoring: Callable[[], Mapping[int, int]] = dict
    if settings.worker.runs_ingest:
        ingest, services = ingest_services(settings, metrics, rules, agent_is_behind=agent.is_behind)
        for service in services:
            app.service(service)  # type: ignore[arg-type]
        owned = lambda: ingest.owned_partitions  # noqa: E731
        restoring = lambda: ingest.restoring  # noqa: E731
    metrics.table_restore_remaining.set_function(lambda: table_records_left(app))
    health = Health(
        ingest_partitions=owned,
        agent_recovering=lambda: agent_waits_for(app),
        ingest_restoring=restoring,
    )
    app.web_server(WebServer(settings, metrics, rules.channels, health))
    return app


def table_records_left(app: faust.App) -> int:
    """Changelog records the KPI agent still reads to recover its table (0 when it is not)."""
    if not getattr(app, "in_recovery", False):
        return 0
    return int(cast(Any, app.tables).recovery.active_remaining_total())


def agent_waits_for(app: faust.App) -> str | None:
    """Why the KPI agent does not publish yet; None when it does."""
    if app.rebalancing:
        return "the KPI agent is rebalancing"
    if getattr(app, "in_recovery", False):
        left = table_records_left(app)
        return f"the KPI agent is recovering its table from the changelog ({left} records left)"
    return None


def ingest_services(
    settings: Settings,
    metrics: Metrics,
    rules: ChannelRules,
    agent_is_behind: Callable[[], bool] = lambda: False,
) -> tuple[IngestService, list[Service]]:
    """Ingest, and the repartitioning before it when the raw topic is not keyed by subject."""
    worker_name = settings.worker.resolved_worker_name
    pseudonymizer = Pseudonymizer.from_key(settings.ingest.pseudonymization_key)
    ingest = IngestService(
        settings,
        metrics,
        worker_name=worker_name,
        rules=rules,
        pseudonymizer=pseudonymizer,
        agent_is_behind=agent_is_behind,
    )
    services: list[Service] = [ingest]
    if not settings.topics.raw_keyed_by_subject:
        services.insert(0, RepartitionService(settings, metrics, worker_name, pseudonymizer))
    return ingest, services


def create_ingest_worker_services(settings: Settings) -> list[Service]:
    """The services of a worker of role ``ingest``: no Faust app (it would join the KPI agent's
    group), only ingest and the web server (metrics and probes; the board and API too)."""
    metrics = Metrics()
    rules = ChannelRules.configured(settings.ingest.channel_rules_file)
    ingest, services = ingest_services(settings, metrics, rules)
    health = Health(
        ingest_partitions=lambda: ingest.owned_partitions,
        agent_recovering=None,
        ingest_restoring=lambda: ingest.restoring,
    )
    return [*services, WebServer(settings, metrics, rules.channels, health)]
