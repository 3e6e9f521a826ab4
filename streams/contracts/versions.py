"""Every published contract with its schema version: the one table that producers stamp
messages from and that ``mkpi schemas`` writes schemas/ from.

Versions are MODEL-REVISION-ADDITION (SchemaVer): a new optional field bumps ADDITION, a
change that can break a reader bumps MODEL, and the file name carries the whole version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.contracts.deltas import DeltaBatch
from streams.contracts.events import RawEvent
from streams.contracts.journal import JournalRecord
from streams.contracts.outputs import AlertEvent, BadRow, IngestReport, KpiUpdate, LateEvent
from streams.contracts.repartition import ForwardedMarks


@dataclass(frozen=True, slots=True)
class Contract:
    """One message shape: its name, version, schemas/ folder, model and description."""

    name: str
    version: str
    folder: str
    model: Any
    description: str

    @property
    def schema_path(self) -> str:
        return f"{self.folder}/{self.name}-{self.version}.json"


CONTRACTS: tuple[Contract, ...] = (
    Contract(
        "raw_event",
        "1-0-0",
        "events",
        RawEvent,
        "One raw marketing event per Kafka message on the raw topic; `type` selects the shape. "
        "Optional fields may be absent or null; unknown fields are ignored.",
    ),
    Contract(
        "kpi_update",
        "1-1-0",
        "outputs",
        KpiUpdate,
        "Value of one KPI in one window. On <prefix>.kpi-updates (compacted): the latest value, "
        "open or final. On <prefix>.kpi-windows: the final result of a closed window "
        "(revision 0), then one message per late correction (revision 1, 2, ...); keep the "
        "highest revision. Key on both: the JSON array "
        "[kpi, window_seconds, window_start_unix_seconds, channel, campaign].",
    ),
    Contract(
        "late_event",
        "1-0-0",
        "outputs",
        LateEvent,
        "A valid event that came too late for some or all of its windows (past end + grace + "
        "retention by its raw partition's watermark), on <prefix>.late-events.",
    ),
    Contract(
        "bad_row",
        "1-0-0",
        "outputs",
        BadRow,
        "A raw message that was not counted, with why, on <prefix>.bad-rows.",
    ),
    Contract(
        "ingest_report",
        "1-1-0",
        "outputs",
        IngestReport,
        "What one ingest flush did with its raw messages, on <prefix>.ingest-accounting. Summed "
        "over the topic (read_committed), it accounts for every raw message exactly once.",
    ),
    Contract(
        "kpi_delta",
        "2-1-0",
        "internal",
        DeltaBatch,
        "Internal, on <prefix>.kpi-deltas, no key: a batch of one ingest flush for one partition. "
        "deltas: increments of cells whose channel and campaign hash to this partition (at most "
        "500 per message); marks: the event-time watermarks of the raw partitions the flush read, "
        "in the flush's last message to every partition, applied after its deltas.",
    ),
    Contract(
        "forwarded_marks",
        "1-0-0",
        "internal",
        ForwardedMarks,
        "Internal, on <prefix>.raw-by-subject between the copied raw messages, with the header "
        "mkpi-marks: how far each raw partition has come as the repartition stage copied it, sent "
        "to every partition after each batch. Not an event: ingest reads it for event-time "
        "progress and counts it nowhere.",
    ),
    Contract(
        "state_journal",
        "1-0-0",
        "internal",
        JournalRecord,
        "Internal, on <prefix>.ingest-state, MessagePack, no key, partition = the raw (or "
        "repartitioned) partition whose subjects it holds: ingest's per-subject state (event ids "
        "seen, first sightings of distinct counts, sessions), written in the flush's transaction: "
        "a flush's changes, or a snapshot of the whole state in parts. Read by ingest alone.",
    ),
    Contract(
        "alert",
        "1-0-0",
        "outputs",
        AlertEvent,
        'A drop alert on <prefix>.alerts, keyed by the JSON array ["alert", rule, channel, '
        "campaign]: one firing event when an incident opens, one resolved event when it closes, "
        "with the same incident_id. After a worker restart an event may come again with the same "
        "incident_id and status; keep one.",
    ),
)

_VERSIONS = {contract.name: contract.version for contract in CONTRACTS}

KPI_UPDATE_VERSION = _VERSIONS["kpi_update"]
KPI_DELTA_VERSION = _VERSIONS["kpi_delta"]
LATE_EVENT_VERSION = _VERSIONS["late_event"]
BAD_ROW_VERSION = _VERSIONS["bad_row"]
INGEST_REPORT_VERSION = _VERSIONS["ingest_report"]
ALERT_VERSION = _VERSIONS["alert"]
STATE_JOURNAL_VERSION = _VERSIONS["state_journal"]
FORWARDED_MARKS_VERSION = _VERSIONS["forwarded_marks"]
#: Marks travel inside kpi_delta messages; their version is their own.
WATERMARK_MARK_VERSION = "1-1-0"
