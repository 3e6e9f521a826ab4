"""Prometheus metrics of one worker, on a registry of its own (no import-time globals)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from streams.contracts.deltas import ALL
from streams.contracts.events import EVENT_TYPES
from streams.contracts.outputs import BadReason
from streams.core.catalog import KPI_UNITS, MEASURES, Unit

OUTCOMES = ("valid", "bad", "duplicate", "late")


class Metrics:
    def __init__(self) -> None:
        # ``*_created`` series double the exposition and no board or rule here reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        # process_* (CPU, resident memory, open files) and python_info, as other exporters have.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.build = Info("mkpi_build", "The mkpi release this worker runs.", registry=self.registry)
        self.build.info({"version": _version(), "python": platform.python_version()})
        self.ingest_messages = Counter(
            "mkpi_ingest_messages_total",
            "Raw messages whose outcome was committed, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.bad_rows = Counter(
            "mkpi_ingest_bad_rows_total",
            "Raw messages routed to the bad-row topic, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.flush_seconds = Histogram(
            "mkpi_ingest_flush_seconds",
            "Time to produce one batch's deltas and bad rows and commit its offsets.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.deltas_produced = Counter(
            "mkpi_ingest_deltas_total",
            "Delta messages produced (one per KPI key per flush).",
            registry=self.registry,
        )
        self.ingest_aborts = Counter(
            "mkpi_ingest_aborted_flushes_total",
            "Flushes whose transaction was aborted; their input is read again.",
            registry=self.registry,
        )
        self.repartitioned = Counter(
            "mkpi_repartitioned_messages_total",
            "Raw messages copied to the topic keyed by subject (MKPI_RAW_KEYED_BY_SUBJECT=false).",
            registry=self.registry,
        )
        self.state_journal_records = Counter(
            "mkpi_ingest_state_journal_records_total",
            "Records ingest wrote to its per-subject state journal (a flush's changes, or parts "
            "of a snapshot).",
            registry=self.registry,
        )
        self.state_entries = Gauge(
            "mkpi_ingest_state_entries",
            "Entries of ingest's per-subject state (event ids and distinct-count keys within "
            "their horizon, subjects with sessions), by counted partition.",
            ["partition"],
            registry=self.registry,
        )
        self.state_restores = Counter(
            "mkpi_ingest_state_restores_total",
            "Partitions whose per-subject state ingest brought to their committed offset (taking "
            "a partition over, or after an aborted flush), by how: kept (the store on disk, "
            "reading the journal after its checkpoint) or rebuilt (from the newest snapshot).",
            ["how"],
            registry=self.registry,
        )
        self.state_restore_records = Counter(
            "mkpi_ingest_state_restore_records_total",
            "State journal records ingest read to bring its partitions' stores to their committed offsets.",
            registry=self.registry,
        )
        self.state_restore_remaining = Gauge(
            "mkpi_ingest_state_restore_remaining_records",
            "State journal records left to read before the partition's state is restored (0 "
            "once it is), by counted partition.",
            ["partition"],
            registry=self.registry,
        )
        self.store_memory = Gauge(
            "mkpi_ingest_store_memory_bytes",
            "Memory RocksDB holds for ingest's state stores, by kind: block_cache (shared by the "
            "worker's stores, memtables charged to it), memtables, table_readers (outside the cache).",
            ["kind"],
            registry=self.registry,
        )
        self.table_restore_remaining = Gauge(
            "mkpi_table_restore_remaining_records",
            "KPI table changelog records the agent still reads before it publishes (0 once its "
            "table is recovered).",
            registry=self.registry,
        )
        self.ingest_refused = Counter(
            "mkpi_ingest_refused_messages_total",
            "Messages a topic refused to take from ingest (too large, not authorized, ...); their "
            "flush is aborted and retried.",
            ["topic"],
            registry=self.registry,
        )
        self.events = Counter(
            "mkpi_ingest_events_total",
            "Valid, non-duplicate events counted, by event type.",
            ["type"],
            registry=self.registry,
        )
        self.ingest_partitions = Gauge(
            "mkpi_ingest_assigned_partitions",
            "Raw topic partitions this worker's ingest currently reads.",
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "mkpi_redis_up",
            "1 when the worker's last Redis call succeeded, 0 while Redis is unreachable (paused).",
            registry=self.registry,
        )
        self.deltas_applied = Counter(
            "mkpi_deltas_applied_total",
            "Deltas merged into the KPI table.",
            registry=self.registry,
        )
        self.deltas_replayed = Counter(
            "mkpi_deltas_replayed_total",
            "Deltas skipped because the table had already applied them (replay after restart).",
            registry=self.registry,
        )
        self.view_errors = Counter(
            "mkpi_redis_view_errors_total",
            "Redis calls of the KPI agent that failed (view writes and unique-visitor counts); each "
            "is retried until Redis answers.",
            registry=self.registry,
        )
        self.deltas_invalid = Counter(
            "mkpi_deltas_invalid_total",
            "Messages on the delta topic that could not be decoded (skipped and logged).",
            registry=self.registry,
        )
        self.measures = Counter(
            "mkpi_measure_total",
            "Counts behind the KPIs (events, sessions, unique opens and clicks), all windows "
            "together. channel or campaign '*' is the roll-up over all of them.",
            ["measure", "channel", "campaign"],
            registry=self.registry,
        )
        #: The summed measures, each a metric in its own unit (the counts' metric has none).
        self.measure_sums = {
            measure: (Counter(name, help_text, ["channel", "campaign"], registry=self.registry), scale)
            for measure, (name, scale, help_text) in SUM_MEASURE_METRICS.items()
        }
        self.kpi_current = self._kpi_gauges("mkpi_kpi_current", "in the newest window seen for the series")
        self.kpi_current_window_start = Gauge(
            "mkpi_kpi_current_window_start_seconds",
            "Start (Unix time) of the window mkpi_kpi_current* reports.",
            ["kpi", "window", "channel", "campaign"],
            registry=self.registry,
        )
        self.late_events = Counter(
            "mkpi_ingest_late_events_total",
            "Valid events not counted in a window size because that window had passed retention "
            "(end + grace + retention) by their partition's watermark; published on the late topic.",
            ["window"],
            registry=self.registry,
        )
        self.ingest_lag = Gauge(
            "mkpi_ingest_lag_messages",
            "Committed raw messages not yet read, per raw partition this worker's ingest reads.",
            ["partition"],
            registry=self.registry,
        )
        self.partition_watermark = Gauge(
            "mkpi_ingest_partition_watermark_seconds",
            "Event-time watermark (Unix time) ingest last published for a raw partition it owns.",
            ["partition"],
            registry=self.registry,
        )
        self.low_watermark = Gauge(
            "mkpi_low_watermark_seconds",
            "Lowest watermark over all raw partitions, as seen by the KPI agent (Unix time).",
            registry=self.registry,
        )
        self.cells_closed = Counter(
            "mkpi_cells_closed_total",
            "Cells (window, channel, campaign) whose final result was emitted.",
            registry=self.registry,
        )
        self.revisions = Counter(
            "mkpi_cell_revisions_total",
            "Results re-emitted for closed windows because late events (within retention) changed them.",
            registry=self.registry,
        )
        self.cells_expired = Counter(
            "mkpi_cells_expired_total",
            "Cells removed from the KPI table after their window passed retention.",
            registry=self.registry,
        )
        self.delta_gap_reads = Counter(
            "mkpi_delta_gap_reads_total",
            "Offset gaps on the delta topic read back from Kafka (most hold only transaction markers).",
            registry=self.registry,
        )
        self.delta_gap_records = Counter(
            "mkpi_delta_gap_records_total",
            "Records found in those gaps: delta messages Faust's stream passed by (never delivered, or "
            "applied without their outputs published), applied from Kafka.",
            registry=self.registry,
        )
        self.alerts = Counter(
            "mkpi_alerts_total",
            "Drop alert events published on <prefix>.alerts.",
            ["rule", "kpi", "status", "cause"],
            registry=self.registry,
        )
        self.alert_judgements = Counter(
            "mkpi_alert_judgements_total",
            "Closed windows judged by each drop alert rule: result is ok, breach, or unjudged "
            "(no baseline window yet, or too little volume in it).",
            ["rule", "result"],
            registry=self.registry,
        )
        self.deltas_after_retention = Counter(
            "mkpi_deltas_after_retention_total",
            "Deltas for windows already past retention (dropped; should stay 0: see the logs).",
            registry=self.registry,
        )
        self.kpi_last_closed = self._kpi_gauges(
            "mkpi_kpi_last_closed", "in the newest closed window of the series, revisions included"
        )
        self.kpi_last_closed_window_start = Gauge(
            "mkpi_kpi_last_closed_window_start_seconds",
            "Start (Unix time) of the window mkpi_kpi_last_closed* reports.",
            ["kpi", "window", "channel", "campaign"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.ingest_messages.labels(outcome)
        for reason in BadReason:
            self.bad_rows.labels(reason.value)
        for event_type in EVENT_TYPES:
            self.events.labels(event_type)
        for measure in MEASURES:
            self.count_measure(measure, ALL, ALL, 0)

    def _kpi_gauges(self, name: str, which_window: str) -> dict[Unit, Gauge]:
        """One gauge per unit (Prometheus names carry their unit: ``name``, ``name_ratio``,
        ``name_seconds``), labelled by KPI."""
        return {
            unit: Gauge(
                kpi_metric_name(name, unit),
                f"Value of a KPI measured {KPI_UNIT_WORDS[unit]}, {which_window}"
                + (" (NaN: denominator 0)." if unit is Unit.RATIO else "."),
                ["kpi", "window", "channel", "campaign"],
                registry=self.registry,
            )
            for unit in Unit
        }

    def count_measure(self, measure: str, channel: str, campaign: str, amount: int) -> None:
        """Add ``amount`` of ``measure`` to its counter (a sum in its metric's unit)."""
        if measure in self.measure_sums:
            counter, scale = self.measure_sums[measure]
            counter.labels(channel, campaign).inc(amount * scale)
        else:
            self.measures.labels(measure, channel, campaign).inc(amount)

    def remove_measure(self, measure: str, channel: str, campaign: str) -> None:
        if measure in self.measure_sums:
            self.measure_sums[measure][0].remove(channel, campaign)
        else:
            self.measures.remove(measure, channel, campaign)


#: The summed measures' metrics: name, factor from the measure's unit, help.
SUM_MEASURE_METRICS = {
    "engaged_ms": (
        "mkpi_engaged_seconds_total",
        0.001,
        "Engaged time reported by page_engagement events (time on page's numerator), all windows together.",
    ),
    "lead_value_cents": (
        "mkpi_lead_value_cents_total",
        1,
        "Value of leads in cents of the events' currency, all windows together.",
    ),
}
KPI_UNIT_WORDS = {Unit.COUNT: "in counts", Unit.RATIO: "as a ratio (0-1)", Unit.SECONDS: "in seconds"}


def kpi_metric_name(name: str, unit: Unit) -> str:
    """The metric of ``unit`` among a KPI gauge's metrics: counts carry no unit suffix."""
    return name if unit is Unit.COUNT else f"{name}_{unit.value}"


def kpi_metric(name: str, kpi: str) -> str:
    """The metric that holds ``kpi``'s values among the ``name`` gauges."""
    return kpi_metric_name(name, KPI_UNITS[kpi])


def _version() -> str:
    try:
        return version("mkpi")
    except PackageNotFoundError:  # run from a source tree without installing it
        return "unknown"
